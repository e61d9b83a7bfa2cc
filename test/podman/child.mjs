// A converter process for the crash and concurrency tests: adds the images
// listed in a JSON file to a repository's podman store, one after the other,
// with the built module (dist/), printing "added <i>" after each.
import { readFileSync } from 'node:fs';
import { systemHost } from '../../dist/core/host/host.js';
import { addImageToPodmanStore } from '../../dist/convert/podman/index.js';

const [repo, file] = process.argv.slice(2);
const images = JSON.parse(readFileSync(file, 'utf8'));
for (const [i, im] of images.entries()) {
  await addImageToPodmanStore(repo, { ...im, manifest: Buffer.from(im.manifest, 'base64'), config: Buffer.from(im.config, 'base64') }, { host: systemHost });
  process.stdout.write(`added ${i}\n`);
}
