/**
 * The podman / CRI-O additional image store in a repository
 * (`<repository>/podmanStore`, containers/storage's overlay format). See docs/podman.md.
 */
export { addImageToPodmanStore, type PodmanImageInput } from './add.js';
export { checkPodmanStore } from './check.js';
export { checkStoreRoot, layerIds, podmanName, STORE_DIR, shortLink } from './format.js';
export { collectPodmanStore, type PodmanGcReport, removeImagesFromPodmanStore, removeNamesFromPodmanStore } from './gc.js';
export { storageConf } from './setup.js';
export { addTreeImageToPodmanStore, podmanInput, podmanNameOfTreeName } from './tree.js';
