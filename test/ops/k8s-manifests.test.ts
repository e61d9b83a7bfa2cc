/**
 * packaging/kubernetes/snapshotter, validated offline (the same way as
 * test/csi/manifests.test.ts): Kubernetes' OpenAPI schemas through
 * kubernetes-models, strict field names through its TypeScript interfaces,
 * then what no schema knows — the snapshotter's config, the containerd keys
 * setup merges, names and host paths that must agree.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { setupCommand } from '../../src/cli/setup.js';
import { snapshotterConfigSpec, snapshotterCommand } from '../../src/cli/snapshotter.js';
import { validateConfig } from '../../src/edge/settings.js';
import { editContainerdConfig, newConfig } from '../../src/ops/containerd-config.js';

type Obj = Record<string, any>;

const ROOT = path.resolve(import.meta.dirname, '../../packaging/kubernetes/snapshotter');
const docs: { file: string; doc: Obj }[] = readdirSync(ROOT)
  .filter((f) => f.endsWith('.yaml'))
  .flatMap((file) =>
    parseAllDocuments(readFileSync(path.join(ROOT, file), 'utf8')).map((d) => {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
      return { file, doc: d.toJS() as Obj };
    }),
  );
const label = (d: Obj) => `${d['kind']} ${d['metadata']?.['name']}`;
const modelPath = (d: Obj) => `kubernetes-models/${d['apiVersion']}/${d['kind']}`;
const named = (kind: string, name: string) => docs.find((d) => d.doc['kind'] === kind && d.doc['metadata']['name'] === name)!.doc;

async function schemaErrors(d: Obj): Promise<string | null> {
  const mod = (await import(modelPath(d))) as Record<string, new (x: Obj) => { validate(): void }>;
  try {
    new mod[d['kind']]!(d).validate();
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

/** Type-check objects against kubernetes-models' interfaces (excess properties are errors). */
function strictErrors(objs: Obj[]): string[] {
  const dir = path.resolve(import.meta.dirname);
  const virtual = new Map<string, string>();
  objs.forEach((d, i) =>
    virtual.set(
      path.join(dir, `__k8s_ops_${i}.ts`),
      `import type { I${d['kind']} } from '${modelPath(d)}';\nexport const x: I${d['kind']} = ${JSON.stringify(d, null, 1)};\n`,
    ),
  );
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (f, lang, ...rest) => (virtual.has(f) ? ts.createSourceFile(f, virtual.get(f)!, lang) : getSourceFile(f, lang, ...rest));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (f) => virtual.has(f) || fileExists(f);
  const readFile = host.readFile.bind(host);
  host.readFile = (f) => virtual.get(f) ?? readFile(f);
  return ts.getPreEmitDiagnostics(ts.createProgram([...virtual.keys()], options, host)).map((dg) => {
    const i = dg.file ? Number(/__k8s_ops_(\d+)/.exec(dg.file.fileName)?.[1]) : NaN;
    return `${Number.isNaN(i) ? '' : `${label(objs[i]!)}: `}${ts.flattenDiagnosticMessageText(dg.messageText, '\n')}`;
  });
}

const flags = (args: string[]) => Object.fromEntries(args.filter((a) => a.startsWith('--')).map((a) => [a.split('=')[0]!, a.split('=').slice(1).join('=')]));

describe('Kubernetes manifests of the snapshotter (offline validation)', () => {
  it('are the expected objects', () => {
    expect(docs.map((d) => `${d.file}: ${label(d.doc)}`).sort()).toEqual([
      'configmap.yaml: ConfigMap cvmfs-thin-snapshotter',
      'containerd-setup.yaml: DaemonSet cvmfs-thin-containerd-setup',
      'daemonset.yaml: DaemonSet cvmfs-thin-snapshotter',
      'namespace.yaml: Namespace cvmfs-thin',
      'runtimeclass.yaml: RuntimeClass cvmfs-thin-bootstrap',
    ]);
  });

  it.each(docs.map((d) => [`${d.file}: ${label(d.doc)}`, d.doc] as const))("%s validates against Kubernetes' OpenAPI schema", async (_n, d) => {
    expect(await schemaErrors(d)).toBeNull();
  });

  it('has no unknown or misplaced fields (strict)', () => {
    expect(strictErrors(docs.map((d) => d.doc))).toEqual([]);
  });

  it('the validators catch broken objects (negative controls)', async () => {
    const ds = structuredClone(named('DaemonSet', 'cvmfs-thin-snapshotter'));
    ds['spec']['template']['spec']['containers'][0]['volumeMounts'][2]['mountPropagation'] = 'HostToContainr';
    expect(await schemaErrors(ds)).toMatch(/mountPropagation must be equal to one of the allowed values/);
    const typo = structuredClone(named('DaemonSet', 'cvmfs-thin-snapshotter'));
    typo['spec']['template']['spec']['runtimeClass'] = 'x';
    expect(strictErrors([typo]).join('\n')).toMatch(/DaemonSet cvmfs-thin-snapshotter: .*runtimeClass/);
  });
});

describe('what the schemas cannot check', () => {
  const sn = () => named('DaemonSet', 'cvmfs-thin-snapshotter')['spec']['template']['spec'] as Obj;
  const setupPod = () => named('DaemonSet', 'cvmfs-thin-containerd-setup')['spec']['template']['spec'] as Obj;
  const cm = () => named('ConfigMap', 'cvmfs-thin-snapshotter');
  const snConfig = () => validateConfig(parseToml(cm()['data']['config.toml'] as string) as Record<string, unknown>, snapshotterConfigSpec, 'config.toml');
  const hostPathOf = (pod: Obj, c: Obj, mountPath: string) => {
    const m = (c['volumeMounts'] as Obj[]).find((x) => x['mountPath'] === mountPath)!;
    return (pod['volumes'] as Obj[]).find((v) => v['name'] === m['name'])!['hostPath']?.['path'] as string | undefined;
  };

  it('DaemonSets: selectors match, every mount has a volume and every volume a mount', () => {
    for (const d of docs.filter((x) => x.doc['kind'] === 'DaemonSet').map((x) => x.doc)) {
      expect(d['spec']['template']['metadata']['labels']).toMatchObject(d['spec']['selector']['matchLabels']);
      const pod = d['spec']['template']['spec'] as Obj;
      const volumes = new Set((pod['volumes'] as Obj[] | undefined)?.map((v) => v['name'] as string));
      const used = new Set<string>();
      for (const c of [...(pod['initContainers'] ?? []), ...pod['containers']] as Obj[])
        for (const m of (c['volumeMounts'] ?? []) as Obj[]) {
          expect(volumes, `${c['name']} mounts ${m['name']}`).toContain(m['name']);
          used.add(m['name']);
        }
      expect([...volumes].filter((v) => !used.has(v))).toEqual([]);
      expect(d['metadata']['namespace']).toBe(named('Namespace', 'cvmfs-thin')['metadata']['name']);
    }
  });

  it("the snapshotter's config is valid, mounted where --config points, and its paths are the host's at the same place", () => {
    const cfg = snConfig();
    const c = sn()['containers'][0] as Obj;
    const vol = (sn()['volumes'] as Obj[]).find((v) => v['configMap'])!;
    expect(vol['configMap']['name']).toBe(cm()['metadata']['name']);
    const mount = (c['volumeMounts'] as Obj[]).find((m) => m['name'] === vol['name'])!;
    expect(flags(c['args'])['--config']).toBe(`${mount['mountPath']}/config.toml`);
    expect(c['args'][0]).toBe('snapshotter');
    expect(snapshotterCommand().options.map((o) => o.long)).toContain('--config');
    const sockDir = path.dirname(cfg.address!);
    expect(hostPathOf(sn(), c, sockDir)).toBe(sockDir);
    expect(hostPathOf(sn(), c, cfg.root!)).toBe(cfg.root);
    expect(hostPathOf(sn(), c, '/cvmfs')).toBe('/cvmfs');
    // its root holds mounts containerd uses (hot layers' EROFS images): they must reach the host
    expect((c['volumeMounts'] as Obj[]).find((m) => m['mountPath'] === cfg.root)?.['mountPropagation']).toBe('Bidirectional');
    expect(c['readinessProbe']['exec']['command']).toContain(cfg.address);
  });

  it('the containerd keys shown are exactly what setup merges, and setup is called with flags it has', async () => {
    const boot = named('RuntimeClass', 'cvmfs-thin-bootstrap');
    const init = setupPod()['initContainers'][0] as Obj;
    const args = init['args'] as string[];
    expect(args.slice(0, 2)).toEqual(['setup', 'containerd']);
    const sub = setupCommand().commands.find((x) => x.name() === 'containerd')!;
    const known = new Set(sub.options.map((o) => o.long));
    for (const f of Object.keys(flags(args))) expect(known, f).toContain(f);
    expect(flags(args)['--bootstrap-runtime']).toBe(boot['handler']);
    expect(sn()['runtimeClassName']).toBe(boot['metadata']['name']);
    expect(setupPod()['runtimeClassName']).toBeUndefined();
    const merged = await editContainerdConfig(
      newConfig(2),
      'config.toml',
      { pluginName: 'cvmfs-snapshotter', address: snConfig().address!, kubernetes: true, bootstrapRuntime: boot['handler'] },
      2,
    );
    expect(parseToml(merged.text)).toEqual(parseToml(cm()['data']['containerd-config.toml'] as string));
    // the host paths setup edits under --root-prefix
    const prefix = flags(args)['--root-prefix']!;
    for (const [inPod, onHost] of [
      [`${prefix}/etc/containerd`, '/etc/containerd'],
      [`${prefix}/var/lib/cvmfs-thin`, '/var/lib/cvmfs-thin'],
      [`${prefix}/run/systemd`, '/run/systemd'],
    ]) {
      expect(hostPathOf(setupPod(), init, inPod!)).toBe(onHost);
    }
    // nsenter into PID 1 needs the host's PID namespace and privileges
    expect(flags(args)['--systemctl']).toMatch(/^nsenter --target 1 --mount -- systemctl$/);
    expect(setupPod()['hostPID']).toBe(true);
    expect(init['securityContext']['privileged']).toBe(true);
  });
});
