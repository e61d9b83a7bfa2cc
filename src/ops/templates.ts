/**
 * The files `cvmfs-thin setup` installs: the daemons' systemd units and their
 * configuration files, exactly as shipped in packaging/ (a test keeps the two
 * identical), with only the command in ExecStart adapted to how this
 * cvmfs-thin is installed.
 */

/** = packaging/systemd/cvmfs-thin-snapshotter.service */
const SNAPSHOTTER_UNIT = `# containerd proxy snapshotter for CVMFS thin images and remote layers.
# Drop-in replacement for cvmfs-snapshotter.service (containerd-cvmfs-grpc):
# same socket, same state directory, same config file.
[Unit]
Description=cvmfs-thin containerd snapshotter
Documentation=https://github.com/cvmfs-thin/cvmfs-thin
After=network.target autofs.service
Before=containerd.service
PartOf=containerd.service

[Service]
Type=simple
ExecStart=/usr/bin/env cvmfs-thin snapshotter --config=/etc/containerd-cvmfs-grpc/config.toml
# stopping never deletes or unmounts snapshot data; running containers are unaffected
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=always
RestartSec=1
LimitNOFILE=1048576

[Install]
RequiredBy=containerd.service
WantedBy=multi-user.target
`;

/** = packaging/systemd/config.toml */
const SNAPSHOTTER_CONFIG = `# /etc/containerd-cvmfs-grpc/config.toml — read by \`cvmfs-thin snapshotter --config\`.
# The first two keys are containerd-cvmfs-grpc's, unchanged.
repository = "unpacked.cern.ch"
# absolute-mountpoint = "/cvmfs/unpacked.cern.ch"

# cvmfs-thin's own keys (defaults shown)
# cvmfs-root = "/cvmfs"
# allowed-repositories = ["unpacked.cern.ch"]
# thin-images = true
# remote-layers = true
# prefetch = true                     # read an image's access profile (.profiles/ in the repository) ahead at Prepare
# hot-wait = 1500                     # ms a pull waits for the image's hot layer (its profile's image mounted, or pack unpacked locally); 0 = none
# hot-image = true                    # mount a profile's EROFS image from CVMFS as the hot layer (Linux 6.12+); false: unpack its pack
# record-profiles = false             # record a profile (fanotify) from the first start of an image without one, into <root>/profiles
# record-window = 10                  # seconds a start is recorded
# start-budget = 250                  # ms: log why a start's own work took longer (default: off); cvmfs-thin why-slow <container>
# cvmfs-timeout = 10                  # seconds a question to CVMFS may take: a stalled client fails Prepare/Mounts (Unavailable)
# check-interval = 30                 # seconds between checks for running containers on a dead CVMFS lower; 0 = off
# log-level = "info"
# address = "/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock"
# root = "/var/lib/containerd-cvmfs-grpc"
`;

/** = packaging/graphdriver/cvmfs-thin-graphdriver.service */
const GRAPHDRIVER_UNIT = `# Docker graph driver plugin for CVMFS thin images (legacy socket plugin).
# dockerd 20.10-27 finds it as storage driver "cvmfs" through the socket
# /run/docker/plugins/cvmfs.sock; see docs/graphdriver.md for daemon.json.
[Unit]
Description=cvmfs-thin Docker graph driver plugin
Documentation=https://github.com/cvmfs-thin/cvmfs-thin/blob/main/docs/graphdriver.md
After=network.target autofs.service
# dockerd needs the socket when it starts (it retries for ~15 s), and calls Cleanup when it stops
Before=docker.service
PartOf=docker.service

[Service]
Type=simple
ExecStart=/usr/bin/env cvmfs-thin graphdriver --config=/etc/cvmfs-thin/graphdriver.toml
# stopping never unmounts or deletes layers: running containers are unaffected,
# and a restarted plugin resumes from its state directory without a new Init
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=always
RestartSec=1
LimitNOFILE=1048576

[Install]
RequiredBy=docker.service
WantedBy=multi-user.target
`;

/** = packaging/graphdriver/graphdriver.toml */
const GRAPHDRIVER_CONFIG = `# /etc/cvmfs-thin/graphdriver.toml — read by \`cvmfs-thin graphdriver --config\`.
# Same CVMFS keys as the snapshotter's config.toml (defaults shown).
# repository = "unpacked.cern.ch"
# absolute-mountpoint = "/cvmfs/unpacked.cern.ch"
# cvmfs-root = "/cvmfs"
# allowed-repositories = ["unpacked.cern.ch"]

# graph driver keys (defaults shown)
# socket = "/run/docker/plugins/cvmfs.sock"   # the file name is the driver name: dockerd -s cvmfs
# state-dir = "/var/lib/cvmfs-thin/graphdriver"
# thin-images = true
# idmapped-layers = "auto"                     # auto | off | require (dockerd --userns-remap)
# prefetch = true                              # read an image's access profile ahead when a container of it is created
# hot-wait = 1500                              # ms registering a thin image waits for its hot layer (its profile's image mounted, or pack unpacked locally); 0 = none
# hot-image = true                             # mount a profile's EROFS image from CVMFS as the hot layer (Linux 6.12+); false: unpack its pack
# start-budget = 2000                          # ms: log why a container start took longer (unset: never); see cvmfs-thin why-slow
# cvmfs-timeout = 10                           # seconds a question to CVMFS may take: a stalled client fails Get
# check-interval = 30                          # seconds between checks for mounted layers on a dead CVMFS; 0 = off
# log-level = "info"
`;

/** = packaging/dockervolume/cvmfs-thin-volume-plugin.service */
const VOLUME_PLUGIN_UNIT = `# Docker volume plugin for CVMFS repositories (legacy socket plugin).
# dockerd finds it as volume driver "cvmfs" through /run/docker/plugins/cvmfs.sock,
# the socket CERN's docker-volume-cvmfs used:
#   docker volume create -d cvmfs [-o tag=...] --name=cms.cern.ch    (once; or known-volumes in the config)
#   docker run -v cms.cern.ch:/cvmfs/cms.cern.ch[:ro] ...
# Note: cvmfs-thin graphdriver defaults to the same socket; run one of them with --socket elsewhere.
[Unit]
Description=cvmfs-thin Docker volume plugin
Documentation=https://github.com/cvmfs-thin/cvmfs-thin/blob/main/packaging/dockervolume/README.md
After=network.target autofs.service
# dockerd restores plugin volumes at start (it waits ~30 s for a missing socket)
Before=docker.service

[Service]
Type=simple
ExecStart=/usr/bin/env cvmfs-thin volume-plugin --config=/etc/cvmfs-thin/volume-plugin.toml
# stopping never unmounts: running containers keep their volumes, and a restarted
# plugin takes over the mounts and their holders from its state directory
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`;

/** = packaging/dockervolume/volume-plugin.toml */
const VOLUME_PLUGIN_CONFIG = `# /etc/cvmfs-thin/volume-plugin.toml — read by \`cvmfs-thin volume-plugin --config\`.
# Flags override these keys; unknown keys are refused. Defaults shown.
# The same keys (except socket) configure \`cvmfs-thin csi\` and the FlexVolume driver.

# socket = "/run/docker/plugins/cvmfs.sock"     # the file name is the driver name: docker run --volume-driver cvmfs
# state-dir = "/var/lib/cvmfs-thin/volumes"     # mounts/<volume> (mount points), metadata/ (holders, names)
# cvmfs-root = "/cvmfs"                         # where the host mounts repositories (autofs or static)
# allowed-repositories = ["*"]                  # repositories usable as volumes: names, "*.cern.ch", "*"
# backend = "host"                              # host: bind <cvmfs-root>/<repo>; client: mount privately
# mount-command = "mount -t cvmfs"              # client backend (and volumes with a tag/hash/date), no shell
# client-config-keys = [...]                    # CVMFS_* keys a volume's clientConfig may set (docs/volumes.md)
# idle-unmount = 0                              # seconds a repository stays mounted after its last container
# mount-timeout = 100                           # seconds a mount may take (dockerd waits 2 minutes)
# cvmfs-timeout = 10                            # seconds a question to a mounted CVMFS may take (a stalled client fails fast)
# check-interval = 30                           # seconds between checks for broken (ENOTCONN) mounts; 0 = off
# known-volumes = []                           # names that exist without \`docker volume create\` ("cms.cern.ch", "atlas.cern.ch@prod"):
#                                               #   -v NAME:/path then works without --volume-driver; -o options need a created volume
# metrics-address = "127.0.0.1:9473"            # Prometheus /metrics, /healthz, /readyz (default: off)
# log-level = "info"
`;

/** The command packaged units run. */
export const PACKAGED_EXEC = '/usr/bin/env cvmfs-thin';

export type Daemon = 'snapshotter' | 'graphdriver' | 'volume-plugin';

interface DaemonFiles {
  /** systemd unit name */
  unit: string;
  /** default config file path (also in the unit's ExecStart) */
  configPath: string;
  /** the runtime the unit is ordered before */
  before: 'containerd.service' | 'docker.service';
}

export const DAEMONS: Record<Daemon, DaemonFiles> = {
  snapshotter: { unit: 'cvmfs-thin-snapshotter.service', configPath: '/etc/containerd-cvmfs-grpc/config.toml', before: 'containerd.service' },
  graphdriver: { unit: 'cvmfs-thin-graphdriver.service', configPath: '/etc/cvmfs-thin/graphdriver.toml', before: 'docker.service' },
  'volume-plugin': { unit: 'cvmfs-thin-volume-plugin.service', configPath: '/etc/cvmfs-thin/volume-plugin.toml', before: 'docker.service' },
};

const UNITS: Record<Daemon, string> = { snapshotter: SNAPSHOTTER_UNIT, graphdriver: GRAPHDRIVER_UNIT, 'volume-plugin': VOLUME_PLUGIN_UNIT };
const CONFIGS: Record<Daemon, string> = { snapshotter: SNAPSHOTTER_CONFIG, graphdriver: GRAPHDRIVER_CONFIG, 'volume-plugin': VOLUME_PLUGIN_CONFIG };

/**
 * The unit of a daemon. `exec` is how to run cvmfs-thin (`/usr/bin/env
 * cvmfs-thin` in the packaged units; an absolute node + script path when
 * cvmfs-thin is not on systemd's PATH); `configPath` replaces the default
 * config file path.
 */
export function renderUnit(d: Daemon, exec = PACKAGED_EXEC, configPath = DAEMONS[d].configPath): string {
  const t = UNITS[d];
  const line = t.split('\n').find((l) => l.startsWith('ExecStart='))!;
  const args = line.slice(`ExecStart=${PACKAGED_EXEC} `.length).replace(`--config=${DAEMONS[d].configPath}`, `--config=${configPath}`);
  return t.replace(line, `ExecStart=${exec} ${args}`);
}

/** The daemon's example configuration file (all keys commented out or defaults). */
export function configTemplate(d: Daemon): string {
  return CONFIGS[d];
}

/** Docker 27 refuses graph driver plugins unless dockerd has this in its environment. */
export const DOCKER27_DROPIN_NAME = 'cvmfs-thin-graphdriver-plugins.conf';
export const DOCKER27_DROPIN = `# written by cvmfs-thin setup docker: Docker 27 loads graph driver plugins only with this set
[Service]
Environment=DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS=1
`;
