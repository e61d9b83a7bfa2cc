/**
 * Command line of the CVMFS publish simulator, for the converter's publishing
 * hooks (argv, no shell). Run with `npx tsx test/helpers/cvmfs-sim/cli.ts …`
 * or `node --import tsx …`; simCommand() in command.ts builds an argv that
 * works from any directory.
 *
 *   init S [--owner UID:GID] [--include-xattrs] [--catalog-limit N] [--mtime-ns]
 *   transaction S [REPO]
 *   publish S [REPO]
 *   abort [-f] S [REPO]
 *   ingest S [--catalog|-c] [-k|--keep-ownership] -t FILE|- -b BASE [-d PATH]… [REPO]
 *   status S            (JSON on stdout)
 *   rmfs [-f] S [REPO]
 *
 * Exit status: 0 done, 1 refused or failed (one line on stderr), 2 bad usage.
 */
import { abort, ingest, init, publish, readConfig, rmfs, SimError, simPaths, transaction, transactionOpen, type IngestOptions } from './sim.js';

class Usage extends Error {}

interface Parsed {
  positionals: string[];
  flags: Set<string>;
  values: Map<string, string[]>;
}

/** Flags that take a value, per command. */
const VALUED: Record<string, string[]> = {
  init: ['--owner', '--catalog-limit'],
  ingest: ['-t', '--tar_file', '-b', '--base_dir', '-d', '--delete'],
};
const BOOLEAN: Record<string, string[]> = {
  init: ['--include-xattrs', '--mtime-ns'],
  transaction: [],
  publish: [],
  abort: ['-f'],
  ingest: ['--catalog', '-c', '-k', '--keep-ownership'],
  status: [],
  rmfs: ['-f'],
};

function parse(cmd: string, argv: string[]): Parsed {
  const out: Parsed = { positionals: [], flags: new Set(), values: new Map() };
  const valued = VALUED[cmd] ?? [];
  const boolean = BOOLEAN[cmd] ?? [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (valued.includes(name)) {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) throw new Usage(`${name} needs a value`);
      out.values.set(name, [...(out.values.get(name) ?? []), v]);
    } else if (boolean.includes(a)) out.flags.add(a);
    else if (a.startsWith('-') && a !== '-') throw new Usage(`${cmd}: unknown option ${a}`);
    else out.positionals.push(a);
  }
  if (out.positionals.length < 1) throw new Usage(`${cmd}: the state directory S is missing`);
  // a trailing repository name (as cvmfs_server takes it) is accepted and ignored
  if (out.positionals.length > 2) throw new Usage(`${cmd}: too many arguments: ${out.positionals.join(' ')}`);
  return out;
}

const one = (p: Parsed, ...names: string[]): string | undefined => names.flatMap((n) => p.values.get(n) ?? []).at(-1);

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || !(cmd in BOOLEAN))
    throw new Usage(`unknown command ${JSON.stringify(cmd ?? '')} (init, transaction, publish, abort, ingest, status, rmfs)`);
  const a = parse(cmd, rest);
  const S = a.positionals[0]!;
  const warn = (m: string) => process.stderr.write(`cvmfs-sim: ${m}\n`);
  switch (cmd) {
    case 'init': {
      const ow = one(a, '--owner');
      let owner: { uid: number; gid: number } | undefined;
      if (ow !== undefined) {
        const m = /^(\d+):(\d+)$/.exec(ow);
        if (!m) throw new Usage(`--owner ${ow}: expected UID:GID`);
        owner = { uid: Number(m[1]), gid: Number(m[2]) };
      }
      const lim = one(a, '--catalog-limit');
      if (lim !== undefined && !/^\d+$/.test(lim)) throw new Usage(`--catalog-limit ${lim}: expected a number`);
      init(S, {
        ...(owner ? { owner } : {}),
        includeXattrs: a.flags.has('--include-xattrs'),
        mtimeNs: a.flags.has('--mtime-ns'),
        ...(lim !== undefined ? { catalogLimit: Number(lim) } : {}),
      });
      return 0;
    }
    case 'transaction':
      transaction(S);
      return 0;
    case 'publish':
      publish(S, warn);
      return 0;
    case 'abort':
      abort(S);
      return 0;
    case 'ingest': {
      const t = one(a, '-t', '--tar_file');
      const b = one(a, '-b', '--base_dir');
      if (t === undefined || b === undefined) throw new Usage('ingest: -t TAR (or -) and -b BASE are required');
      const o: IngestOptions = {
        base: b,
        tar: t === '-' ? 'stdin' : { file: t },
        catalog: a.flags.has('--catalog') || a.flags.has('-c'),
        keepOwnership: a.flags.has('-k') || a.flags.has('--keep-ownership'),
        deletes: [...(a.values.get('-d') ?? []), ...(a.values.get('--delete') ?? [])],
      };
      ingest(S, o);
      return 0;
    }
    case 'status': {
      const cfg = readConfig(S);
      process.stdout.write(`${JSON.stringify({ ...cfg, root: simPaths(S).root, transaction: transactionOpen(S) })}\n`);
      return 0;
    }
    case 'rmfs':
      rmfs(S);
      return 0;
  }
  return 2;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (e) {
  if (e instanceof Usage) {
    process.stderr.write(`cvmfs-sim: ${e.message}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`cvmfs-sim: ${e instanceof SimError ? e.message : e instanceof Error ? `${e.message}` : String(e)}\n`);
    process.exitCode = 1;
  }
}
