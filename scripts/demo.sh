#!/usr/bin/env bash
# cvmfs-thin demo (Debian 12, as root): converts a small image into a local
# CVMFS-style tree (the layout of /cvmfs/unpacked.cern.ch), writes its thin
# image, and runs it thin through a private containerd with our snapshotter;
# then mounts a CVMFS repository of that tree into containers as a volume,
# through the Docker volume plugin (a private dockerd) and the FlexVolume driver.
# Nothing outside $DEMO_DIR (default /tmp/cvmfs-thin-demo) is touched except the
# demo's plugin socket /run/docker/plugins/cvmfs-demo.sock; the daemons are
# stopped and the mounts undone at the end, the tree is left there to look at.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (containerd, mounts)" >&2; exit 1; }
bash scripts/setup.sh >/dev/null

DEMO=${DEMO_DIR:-/tmp/cvmfs-thin-demo}
REPO="$DEMO/cvmfs/unpacked.cern.ch"
CLI=(node "$PWD/bin/cvmfs-thin.js")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  if [ -S "$DEMO/ctd/containerd.sock" ]; then
    C=(ctr --address "$DEMO/ctd/containerd.sock" --namespace demo)
    for t in $("${C[@]}" tasks ls -q 2>/dev/null); do "${C[@]}" tasks kill -s SIGKILL "$t"; done
    sleep 0.5
    for c in $("${C[@]}" containers ls -q 2>/dev/null); do "${C[@]}" tasks rm -f "$c" >/dev/null 2>&1; "${C[@]}" containers rm "$c"; done
  fi
  [ -n "${CTD_PID:-}" ] && kill "$CTD_PID" 2>/dev/null && wait "$CTD_PID" 2>/dev/null
  [ -n "${SN_PID:-}" ] && kill "$SN_PID" 2>/dev/null && wait "$SN_PID" 2>/dev/null
  if [ -n "${DD_PID:-}" ]; then
    DOCKER_HOST="unix://$DEMO/dd/docker.sock" /usr/bin/docker rm -f vol1 >/dev/null 2>&1
    kill "$DD_PID" 2>/dev/null && wait "$DD_PID" 2>/dev/null
  fi
  [ -n "${VP_PID:-}" ] && kill "$VP_PID" 2>/dev/null && wait "$VP_PID" 2>/dev/null
  # whatever is still mounted below the demo directory (dockerd's data root, volumes)
  if [ -d "$DEMO" ]; then
    for m in $(awk -v d="$DEMO/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null; done
  fi
}
trap cleanup EXIT

rm -rf "$DEMO"
mkdir -p "$REPO" "$DEMO/ctd"

step "1. a small source image (busybox, 3 layers; the top layer deletes /etc/obsolete.conf)"
npx --no-install tsx scripts/demo-image.ts "$DEMO/hello.tar" 2>/dev/null | tee "$DEMO/source.json"

step "2. convert it: unpacked layers into the CVMFS tree + a thin image (the form a CVMFS publish keeps: deletions in a record beside each layer)"
"${CLI[@]}" convert "oci-archive:$DEMO/hello.tar" --repository-dir "$REPO" --whiteouts record --thin "oci-archive:$DEMO/hello_thin.tar"
echo "source image $(du -h "$DEMO/hello.tar" | cut -f1), thin image $(du -h "$DEMO/hello_thin.tar" | cut -f1); the tree:"
(cd "$REPO" && find . -maxdepth 3 -path './.layers/*/*' -prune -print | sort | sed 's/^/  /')
echo "thin.json inside the thin image:"
layer=$(tar -xOf "$DEMO/hello_thin.tar" index.json | node -e '
  const fs=require("fs"), cp=require("child_process"); const idx=JSON.parse(fs.readFileSync(0));
  const m=JSON.parse(cp.execFileSync("tar",["-xOf",process.argv[1],"blobs/sha256/"+idx.manifests[0].digest.slice(7)]));
  console.log(m.layers[0].digest.slice(7))' "$DEMO/hello_thin.tar")
tar -xOf "$DEMO/hello_thin.tar" "blobs/sha256/$layer" | tar -xzO thin.json | sed 's/^/  /'
echo "the layers' records (.layers/<xx>/<digest>/.metadata/cvmfs-thin-layer.json): what no publish would keep"
for m in "$REPO"/.layers/*/*/.metadata/cvmfs-thin-layer.json; do
  node -e 'const m=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); const r=m.record;
    console.log(`  ${m.digest.slice(0,19)}…: deleted ${JSON.stringify(r.deleted)}, opaque ${JSON.stringify(r.opaque)}, xattrs ${r.xattrs.length}`)' "$m"
done

step "3. start cvmfs-thin snapshotter (recording access profiles) and a private containerd using it (proxy_plugins.cvmfs-snapshotter)"
"${CLI[@]}" snapshotter --root "$DEMO/snapshotter" --address "$DEMO/snapshotter.sock" --absolute-mountpoint "$REPO" --log-level info \
  --record-profiles --record-window 3 2>"$DEMO/snapshotter.log" &
SN_PID=$!
cat > "$DEMO/ctd/config.toml" <<EOF
version = 2
root = "$DEMO/ctd/root"
state = "$DEMO/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DEMO/ctd/containerd.sock"
[proxy_plugins]
  [proxy_plugins.cvmfs-snapshotter]
    type = "snapshot"
    address = "$DEMO/snapshotter.sock"
EOF
containerd --config "$DEMO/ctd/config.toml" >"$DEMO/containerd.log" 2>&1 &
CTD_PID=$!
for _ in $(seq 100); do [ -S "$DEMO/ctd/containerd.sock" ] && [ -S "$DEMO/snapshotter.sock" ] && break; sleep 0.1; done
C=(ctr --address "$DEMO/ctd/containerd.sock" --namespace demo)
"${C[@]}" plugins ls | grep -E 'TYPE|cvmfs-snapshotter'

step "4. import the thin image with plain ctr (no CRI labels needed) and run it"
"${C[@]}" image import --snapshotter cvmfs-snapshotter "$DEMO/hello_thin.tar"
IMG=$("${C[@]}" image ls -q | head -1)
echo "\$ ctr run --snapshotter cvmfs-snapshotter $IMG   (the image's own Cmd)"
"${C[@]}" run --rm --snapshotter cvmfs-snapshotter "$IMG" demo1
echo "\$ ctr run ... sh -c 'cat /etc/motd; ls /etc; test -e /etc/obsolete.conf || echo ...'"
"${C[@]}" run --rm --snapshotter cvmfs-snapshotter "$IMG" demo2 sh -c 'cat /etc/motd; ls /etc; test -e /etc/obsolete.conf || echo "/etc/obsolete.conf stays deleted"; test -e /thin.json || echo "thin.json is not visible in the container"; echo "CVMFS_IMAGE=$CVMFS_IMAGE"'

step "5. what the snapshotter holds: the thin layer (its lowers are the CVMFS directories), no downloaded layers"
"${C[@]}" snapshots --snapshotter cvmfs-snapshotter ls
grep 'thin image: its CVMFS layers' "$DEMO/snapshotter.log" | tail -1 | node -e '
  const l = JSON.parse(require("fs").readFileSync(0, "utf8"));
  console.log(`  snapshotter log: thin image with ${l.layers} CVMFS layers, mounted as ${l.lowers} lower directories (${l.how.join(", ")})`)'
echo "\$ cvmfs-thin why-slow demo2   (where the time of that start went: the snapshotter traces every start)"
sleep 1
"${CLI[@]}" why-slow --root "$DEMO/snapshotter" demo2 | sed 's/^/  /'

step "5b. the image's access profile, recorded at its first start: published with its pack and EROFS image; the next pull mounts the image (kernels before 6.12: unpacks the pack) as a hot layer"
for _ in $(seq 100); do compgen -G "$DEMO/snapshotter/profiles/*.json" >/dev/null && break; sleep 0.1; done
echo "\$ cvmfs-thin profile publish --repository-dir ... $DEMO/snapshotter/profiles/*.json"
"${CLI[@]}" profile publish --repository-dir "$REPO" "$DEMO"/snapshotter/profiles/*.json | sed 's/^/  /'
C2=(ctr --address "$DEMO/ctd/containerd.sock" --namespace demo-next)
"${C2[@]}" image import --snapshotter cvmfs-snapshotter "$DEMO/hello_thin.tar" >/dev/null
grep 'thin image: its CVMFS layers' "$DEMO/snapshotter.log" | tail -1 | node -e '
  const l = JSON.parse(require("fs").readFileSync(0, "utf8"));
  console.log(`  the next pull (another namespace): lowers ${l.how.join(", ")}; hot layer: ${l.hot} in ${l.hotMs} ms`)'
"${C2[@]}" run --rm --snapshotter cvmfs-snapshotter "$IMG" demo3 sh -c 'cat /etc/motd' | sed 's/^/  /'

step "6. CVMFS repositories as Docker volumes: cvmfs-thin volume-plugin + a private dockerd"
mkdir -p "$DEMO/cvmfs/sft.cern.ch/lcg/releases" "$DEMO/dd" "$DEMO/rootfs/bin"
echo "LCG_105 x86_64-el9-gcc13-opt" > "$DEMO/cvmfs/sft.cern.ch/lcg/releases/README"
"${CLI[@]}" volume-plugin --socket /run/docker/plugins/cvmfs-demo.sock --state-dir "$DEMO/volumes" \
  --cvmfs-root "$DEMO/cvmfs" --allowed-repository '*.cern.ch' --known-volume unpacked.cern.ch 2>"$DEMO/volume-plugin.log" &
VP_PID=$!
/usr/sbin/dockerd --data-root "$DEMO/dd/root" --exec-root "$DEMO/dd/exec" --pidfile "$DEMO/dd/dockerd.pid" \
  -H "unix://$DEMO/dd/docker.sock" --iptables=false --ip-masq=false --bridge=none >"$DEMO/dockerd.log" 2>&1 &
DD_PID=$!
export DOCKER_HOST="unix://$DEMO/dd/docker.sock" DOCKER_CONFIG="$DEMO/dd/cli"
D=/usr/bin/docker
for _ in $(seq 200); do "$D" version >/dev/null 2>&1 && [ -S /run/docker/plugins/cvmfs-demo.sock ] && break; sleep 0.2; done
cp /bin/busybox "$DEMO/rootfs/bin/busybox"
for a in sh ls cat echo touch; do ln -sf busybox "$DEMO/rootfs/bin/$a"; done
tar -C "$DEMO/rootfs" -c . | "$D" import - demo/busybox:1 >/dev/null
echo "\$ docker volume create -d cvmfs-demo --name=sft.cern.ch"
"$D" volume create -d cvmfs-demo --name=sft.cern.ch
echo "\$ docker run --rm -v sft.cern.ch:/cvmfs/sft.cern.ch demo/busybox:1 cat /cvmfs/sft.cern.ch/lcg/releases/README"
"$D" run --rm --network none -v sft.cern.ch:/cvmfs/sft.cern.ch demo/busybox:1 cat /cvmfs/sft.cern.ch/lcg/releases/README
echo "\$ docker run --rm -v unpacked.cern.ch:/cvmfs/unpacked.cern.ch demo/busybox:1 ls /cvmfs/unpacked.cern.ch   (--known-volume: no volume create, no --volume-driver)"
"$D" run --rm --network none -v unpacked.cern.ch:/cvmfs/unpacked.cern.ch demo/busybox:1 ls -a /cvmfs/unpacked.cern.ch
echo "\$ docker volume create -d cvmfs-demo -o cache=shared --name=atlas.cern.ch   (an option is applied or refused, never dropped)"
"$D" volume create -d cvmfs-demo -o cache=shared --name=atlas.cern.ch 2>&1 | sed 's/^/  /' || true
echo "\$ docker run ... touch /cvmfs/sft.cern.ch/x   (repositories are read-only)"
"$D" run --rm --network none -v sft.cern.ch:/cvmfs/sft.cern.ch demo/busybox:1 touch /cvmfs/sft.cern.ch/x 2>&1 | sed 's/^/  /' || true
"$D" run -d --name vol1 --network none -v sft.cern.ch:/cvmfs/sft.cern.ch demo/busybox:1 sh -c 'sleep 1000' >/dev/null
echo "while a container runs, one read-only mount of the repository on the host:"
awk -v d="$DEMO/volumes/mounts/" 'index($5, d) == 1 {print "  " $5 " " $6}' /proc/self/mountinfo
echo "\$ docker volume ls; docker volume inspect sft.cern.ch"
"$D" volume ls
"$D" volume inspect --format '  {{.Name}}: driver {{.Driver}}, scope {{.Scope}}, status {{json .Status}}' sft.cern.ch
"$D" rm -f vol1 >/dev/null
echo "after the container: $(awk -v d="$DEMO/volumes/mounts/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l) mounts left"
unset DOCKER_HOST DOCKER_CONFIG

step "7. the Kubernetes FlexVolume driver cern/cvmfs, called as kubelet calls it"
printf 'state-dir = "%s"\ncvmfs-root = "%s"\nallowed-repositories = ["*.cern.ch"]\n' "$DEMO/flexvolume" "$DEMO/cvmfs" > "$DEMO/flexvolume.toml"
"${CLI[@]}" flexvolume install --plugin-dir "$DEMO/kubelet-plugins" --config "$DEMO/flexvolume.toml"
FLEX="$DEMO/kubelet-plugins/cern~cvmfs/cvmfs"
POD="$DEMO/kubelet/pods/0b5c-demo/volumes/cern~cvmfs/sft"
echo "\$ cvmfs init";   "$FLEX" init
echo "\$ cvmfs mount $POD '{\"repository\":\"sft.cern.ch\",\"kubernetes.io/readwrite\":\"ro\"}'"
"$FLEX" mount "$POD" '{"repository":"sft.cern.ch","kubernetes.io/readwrite":"ro","kubernetes.io/pod.name":"demo"}'
echo "  the pod's volume directory: $(cat "$POD/lcg/releases/README")"
echo "\$ cvmfs unmount $POD";  "$FLEX" unmount "$POD"
echo "\$ cvmfs mount $POD '{\"repository\":\"../../etc\"}'   (bad input: a clear Failure, nothing mounted)"
"$FLEX" mount "$POD" '{"repository":"../../etc"}' || true

printf '\n\033[1mdone.\033[0m The CVMFS-style tree is in %s (logs and the images next to it).\n' "$REPO"
