/**
 * Apptainer/Singularity's files in a flat tree (`.singularity.d`, the action
 * scripts, environment, runscript and labels) as DUCC writes them.
 */
import { promises as fsp } from 'node:fs';
import fs from 'node:fs';
import path from 'node:path';
import type { ImageConfig } from './image/types.js';

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Apptainer/Singularity metadata DUCC adds to flat images, so that
 * `apptainer exec /cvmfs/<repo>/<registry>/<repository>:<tag> …` gets the
 * image's environment and runscript.
 */
export async function addSingularityFiles(root: string, config: ImageConfig): Promise<void> {
  const c = config.config ?? {};
  const sd = path.join(root, '.singularity.d');
  for (const d of ['actions', 'env', 'libs']) await fsp.mkdir(path.join(sd, d), { recursive: true, mode: 0o755 });
  for (const d of ['dev', 'proc', 'sys', 'tmp', 'var/tmp', 'home', 'root', 'etc']) {
    await fsp.mkdir(path.join(root, d), { recursive: true, mode: 0o755 }).catch(() => undefined);
  }
  for (const f of ['etc/hosts', 'etc/resolv.conf']) {
    const p = path.join(root, f);
    if (!lstatOrNull(p)) await fsp.writeFile(p, '', { mode: 0o644 });
  }
  const sourceEnv = '#!/bin/sh\nfor script in /.singularity.d/env/*.sh; do\n    if [ -f "$script" ]; then\n        . "$script"\n    fi\ndone\n';
  const actions: Record<string, string> = {
    exec: `${sourceEnv}\nexec "$@"\n`,
    run: `${sourceEnv}\nif test -x /.singularity.d/runscript; then\n    exec /.singularity.d/runscript "$@"\nfi\nexec /bin/sh "$@"\n`,
    shell: `${sourceEnv}\nif test -n "$SINGULARITY_SHELL" -a -x "$SINGULARITY_SHELL"; then\n    exec $SINGULARITY_SHELL "$@"\nelif test -x /bin/bash; then\n    exec /bin/bash --norc "$@"\nfi\nexec /bin/sh "$@"\n`,
    start: `${sourceEnv}\nif test -x /.singularity.d/startscript; then\n    exec /.singularity.d/startscript\nfi\n`,
    test: `${sourceEnv}\nif test -x /.singularity.d/test; then\n    exec /.singularity.d/test "$@"\nfi\nexec /bin/sh -c true\n`,
  };
  for (const [n, body] of Object.entries(actions)) await fsp.writeFile(path.join(sd, 'actions', n), body, { mode: 0o755 });
  const env = (Array.isArray(c.Env) ? c.Env : [])
    .filter((e): e is string => typeof e === 'string' && /^[A-Za-z_][A-Za-z0-9_]*=/.test(e))
    .map((e) => {
      const i = e.indexOf('=');
      return `export ${e.slice(0, i)}=${shQuote(e.slice(i + 1))}`;
    });
  await fsp.writeFile(path.join(sd, 'env', '01-base.sh'), '#!/bin/sh\n', { mode: 0o755 });
  await fsp.writeFile(path.join(sd, 'env', '10-docker2singularity.sh'), `#!/bin/sh\n${env.join('\n')}\n`, { mode: 0o755 });
  await fsp.writeFile(path.join(sd, 'env', '90-environment.sh'), '#!/bin/sh\n# Custom environment shell code should follow\n', { mode: 0o755 });
  await fsp.writeFile(
    path.join(sd, 'env', '99-base.sh'),
    '#!/bin/sh\nif [ -z "$LD_LIBRARY_PATH" ]; then\n    LD_LIBRARY_PATH="/.singularity.d/libs"\nelse\n    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\nPS1="Singularity> "\nexport LD_LIBRARY_PATH PS1\n',
    { mode: 0o755 },
  );
  const argv = [...(Array.isArray(c['Entrypoint']) ? (c['Entrypoint'] as string[]) : []), ...(Array.isArray(c['Cmd']) ? (c['Cmd'] as string[]) : [])];
  const cwd = typeof c['WorkingDir'] === 'string' && c['WorkingDir'] ? `cd ${shQuote(c['WorkingDir'] as string)} 2>/dev/null || true\n` : '';
  const runscript = argv.length
    ? `#!/bin/sh\n${cwd}if [ $# -gt 0 ]; then\n    exec ${(Array.isArray(c['Entrypoint']) ? (c['Entrypoint'] as string[]) : []).map(shQuote).join(' ')} "$@"\nfi\nexec ${argv.map(shQuote).join(' ')}\n`
    : '#!/bin/sh\necho "There is no runscript defined for this container"\n';
  await fsp.writeFile(path.join(sd, 'runscript'), runscript, { mode: 0o755 });
  await fsp.writeFile(path.join(sd, 'startscript'), '#!/bin/sh\n', { mode: 0o755 });
  const labels = c.Labels && typeof c.Labels === 'object' ? c.Labels : {};
  await fsp.writeFile(path.join(sd, 'labels.json'), `${JSON.stringify(labels, null, 2)}\n`, { mode: 0o644 });
  const links: [string, string][] = [
    ['singularity', '.singularity.d/runscript'],
    ['.run', '.singularity.d/actions/run'],
    ['.exec', '.singularity.d/actions/exec'],
    ['.shell', '.singularity.d/actions/shell'],
    ['.test', '.singularity.d/actions/test'],
    ['environment', '.singularity.d/env/90-environment.sh'],
  ];
  for (const [n, t] of links) if (!lstatOrNull(path.join(root, n))) await fsp.symlink(t, path.join(root, n));
}
