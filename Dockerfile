# The cvmfs-thin daemons' image: `cvmfs-thin snapshotter`, `cvmfs-thin graphdriver`
# and the converter (`convert`, `wishlist`, `gc`), Node 20 on Debian 12.
#
#   docker build -t cvmfs-thin .
#   docker run --rm cvmfs-thin --help
#
# The daemons mount overlayfs and must see the host's /cvmfs, so they run
# privileged with the host's mount namespace propagation, e.g. the snapshotter:
#
#   docker run -d --privileged --pid=host --network=host \
#     -v /cvmfs:/cvmfs:rslave -v /run/containerd-cvmfs-grpc:/run/containerd-cvmfs-grpc:rshared \
#     -v /var/lib/containerd-cvmfs-grpc:/var/lib/containerd-cvmfs-grpc:rshared \
#     cvmfs-thin snapshotter
#
# For the Docker graph driver, the same image is the root file system of the
# managed plugin: packaging/graphdriver/build-plugin.sh --from-image cvmfs-thin OUTDIR
# (see docs/graphdriver.md).

# Any image with Node >= 20 and npm works as the base (e.g. one made offline from a
# host's Node and busybox, see test/ops/node-base.ts): --build-arg NODE_IMAGE=...
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# no install scripts: the build below runs tsc once, with the sources present
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE}
# util-linux: unshare(1), for the user namespace of idmapped CVMFS layers (graph driver, --userns-remap),
# and nsenter(1), for `cvmfs-thin setup --systemctl "nsenter --target 1 --mount -- systemctl"` in a pod;
# tar/gzip/zstd: the converter's fallbacks and debugging. A base without apt must bring them (busybox does).
RUN if command -v apt-get >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends util-linux tar gzip zstd ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && for t in node unshare nsenter tar gzip; do command -v "$t" >/dev/null || { echo "base image lacks $t" >&2; exit 1; }; done
WORKDIR /opt/cvmfs-thin
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY proto ./proto
COPY thin-image ./thin-image
RUN mkdir -p /usr/local/bin /cvmfs /mnt /run/docker/plugins \
 && ln -s /opt/cvmfs-thin/bin/cvmfs-thin.js /usr/local/bin/cvmfs-thin
ENV NODE_ENV=production
ENTRYPOINT ["node", "/opt/cvmfs-thin/bin/cvmfs-thin.js"]
CMD ["--help"]
