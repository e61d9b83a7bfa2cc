/**
 * The podman / CRI-O additional image store in a repository
 * (`<repository>/podmanStore`, containers/storage's overlay format). See docs/podman.md.
 */
export { type AddOptions, type AddResult, addImageToPodmanStore, type PodmanImageInput, type PodmanLayerInput } from './add.js';
export { checkPodmanStore, type StoreCheck } from './check.js';
export { checkStoreRoot, layerIds, podmanName, STORE_DIR, shortLink } from './format.js';
export { collectPodmanStore, type PodmanGcOptions, type PodmanGcReport, removeImagesFromPodmanStore, removeNamesFromPodmanStore } from './gc.js';
export { storageConf } from './setup.js';
export { addTreeImageToPodmanStore, podmanInput, podmanNameOfTreeName } from './tree.js';
