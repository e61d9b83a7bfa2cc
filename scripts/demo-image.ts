/**
 * Builds the demo's source image: a small busybox-based OCI image archive with
 * three layers, the top one deleting a file of the base layer (to show that
 * deleted files stay deleted when the image runs thin).
 *   npx tsx scripts/demo-image.ts OUT.tar [NAME]
 */
import { buildImage, busyboxEntries, writeOciArchive } from '../test/helpers/oci-image.js';

const [out, name = 'registry.example.org/demo/hello:1.0'] = process.argv.slice(2);
if (!out) {
  console.error('usage: demo-image.ts OUT.tar [NAME]');
  process.exit(2);
}
const img = await buildImage(
  name,
  [
    [...busyboxEntries('demo'), { path: 'etc/obsolete.conf', content: 'this file is deleted by the top layer\n' }],
    [
      { path: 'usr/', type: 'dir' },
      { path: 'usr/share/', type: 'dir' },
      { path: 'usr/share/hello/', type: 'dir' },
      { path: 'usr/share/hello/message', content: 'Hello from a thin image: this file was read from the CVMFS tree.\n' },
    ],
    [
      { path: 'etc/.wh.obsolete.conf', content: '' },
      { path: 'etc/motd', content: 'cvmfs-thin demo\n' },
    ],
  ],
  { config: { Cmd: ['/bin/cat', '/usr/share/hello/message'], Env: ['PATH=/bin'], WorkingDir: '/', Labels: { 'org.example.demo': 'yes' } } },
);
await writeOciArchive(out, img);
console.log(JSON.stringify({ name, manifest: img.manifestDigest, layers: img.layers.map((l) => l.digest) }));
