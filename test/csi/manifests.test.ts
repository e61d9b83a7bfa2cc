/**
 * packaging/kubernetes/csi, validated offline:
 *  1. against Kubernetes' OpenAPI schemas (kubernetes-models: ajv validators
 *     generated from the API server's OpenAPI document — types, required
 *     fields, enums);
 *  2. strictly, field names included (the schemas allow unknown fields, the
 *     API server's strict field validation does not): every object is
 *     type-checked against kubernetes-models' TypeScript interfaces, whose
 *     excess-property check catches a misspelt or misplaced field;
 *  3. for what no schema knows: names that must agree across objects, the
 *     plugin's own config file, propagation modes, and the example volumes
 *     against what the plugin accepts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { csiConfigSpec } from '../../src/cli/csi.js';
import { validateConfig } from '../../src/edge/settings.js';
import { ACCEPTED_MOUNT_FLAGS, KNOWN_ATTRIBUTES } from '../../src/csi/request.js';

type Obj = Record<string, any>;

const ROOT = path.resolve(import.meta.dirname, '../../packaging/kubernetes/csi');
const files = (d: string): string[] =>
  readdirSync(d, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(path.join(d, e.name)) : e.name.endsWith('.yaml') ? [path.join(d, e.name)] : [],
  );
const docs: { file: string; doc: Obj }[] = files(ROOT).flatMap((file) =>
  parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
    return { file: path.relative(ROOT, file), doc: d.toJS() as Obj };
  }),
);
const label = (d: Obj) => `${d['kind']} ${d['metadata']?.['name']}`;
const modelPath = (d: Obj) => `kubernetes-models/${d['apiVersion']}/${d['kind']}`;
const all = (kind: string) => docs.filter((d) => d.doc['kind'] === kind).map((d) => d.doc);
const one = (kind: string) => {
  const xs = all(kind);
  expect(xs, kind).toHaveLength(1);
  return xs[0]!;
};

async function schemaErrors(d: Obj): Promise<string | null> {
  const mod = (await import(modelPath(d))) as Record<string, new (x: Obj) => { validate(): void }>;
  try {
    new mod[d['kind']]!(d).validate();
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

/** Type-check objects against kubernetes-models' interfaces; returns one message per problem. */
function strictErrors(objs: Obj[]): string[] {
  const dir = path.resolve(import.meta.dirname);
  const virtual = new Map<string, string>();
  objs.forEach((d, i) => {
    const kind = d['kind'] as string;
    virtual.set(
      path.join(dir, `__k8s_strict_${i}.ts`),
      `import type { I${kind} } from '${modelPath(d)}';\nexport const x: I${kind} = ${JSON.stringify(d, null, 1)};\n`,
    );
  });
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
  const program = ts.createProgram([...virtual.keys()], options, host);
  return ts.getPreEmitDiagnostics(program).map((dg) => {
    const i = dg.file ? Number(/__k8s_strict_(\d+)/.exec(dg.file.fileName)?.[1]) : NaN;
    const where = Number.isNaN(i) ? '' : `${label(objs[i]!)}: `;
    return `${where}${ts.flattenDiagnosticMessageText(dg.messageText, '\n')}`;
  });
}

describe('Kubernetes manifests (offline validation)', () => {
  it('are the expected objects', () => {
    expect(docs.map((d) => `${d.file}: ${label(d.doc)}`).sort()).toEqual(
      [
        'configmap.yaml: ConfigMap cvmfs-thin-csi',
        'csidriver.yaml: CSIDriver cvmfs.csi.cern.ch',
        'daemonset.yaml: DaemonSet cvmfs-thin-csi',
        'examples/inline-pod.yaml: Pod cvmfs-inline',
        'examples/static-pv.yaml: PersistentVolume cvmfs-atlas',
        'examples/static-pv.yaml: PersistentVolumeClaim cvmfs-atlas',
        'examples/static-pv.yaml: Pod cvmfs-atlas-reader',
        'examples/whole-tree-pv.yaml: PersistentVolume cvmfs-all',
        'examples/whole-tree-pv.yaml: PersistentVolumeClaim cvmfs-all',
        'examples/whole-tree-pv.yaml: Pod cvmfs-all-reader',
        'namespace.yaml: Namespace cvmfs-thin',
        'rbac.yaml: ServiceAccount cvmfs-thin-csi',
      ].sort(),
    );
  });

  it.each(docs.map((d) => [`${d.file}: ${label(d.doc)}`, d.doc] as const))("%s validates against Kubernetes' OpenAPI schema", async (_n, d) => {
    expect(await schemaErrors(d)).toBeNull();
  });

  it('has no unknown or misplaced fields (strict, like kubectl --validate=strict)', () => {
    expect(strictErrors(docs.map((d) => d.doc))).toEqual([]);
  });

  it('the validators do catch broken objects (negative controls)', async () => {
    const ds = structuredClone(one('DaemonSet'));
    ds['spec']['template']['spec']['containers'][0]['volumeMounts'][1]['mountPropagation'] = 'Bidirectionnal';
    expect(await schemaErrors(ds)).toMatch(/mountPropagation must be equal to one of the allowed values/);
    const drv = structuredClone(one('CSIDriver'));
    drv['spec']['attachRequired'] = 'false';
    expect(await schemaErrors(drv)).toMatch(/attachRequired must be boolean/);
    const typo = structuredClone(one('DaemonSet'));
    typo['spec']['template']['spec']['containers'][0]['imagePullPolicyy'] = 'Always';
    const pv = structuredClone(all('PersistentVolume')[0]!);
    pv['spec']['csi']['volumeAttribute'] = { repository: 'x' };
    const errs = strictErrors([typo, pv]);
    expect(errs.join('\n')).toMatch(/DaemonSet cvmfs-thin-csi: .*imagePullPolicyy/);
    expect(errs.join('\n')).toMatch(/PersistentVolume cvmfs-atlas: .*volumeAttribute/);
  });
});

describe('what the schemas cannot check', () => {
  const drv = () => one('CSIDriver');
  const ds = () => one('DaemonSet');
  const pod = () => ds()['spec']['template']['spec'] as Obj;
  const container = (name: string) => (pod()['containers'] as Obj[]).find((c) => c['name'] === name)!;
  const args = (c: Obj) =>
    Object.fromEntries((c['args'] as string[]).filter((a) => a.startsWith('--')).map((a) => [a.split('=')[0], a.split('=').slice(1).join('=')]));

  it('CSIDriver: node-only, pod info, persistent + inline, no fsGroup changes', () => {
    expect(drv()['spec']).toMatchObject({
      attachRequired: false,
      podInfoOnMount: true,
      volumeLifecycleModes: ['Persistent', 'Ephemeral'],
      fsGroupPolicy: 'None',
    });
  });

  it('one driver name everywhere: CSIDriver, --driver-name, socket dirs, examples', () => {
    const name = drv()['metadata']['name'] as string;
    expect(args(container('cvmfs-thin'))['--driver-name']).toBe(name);
    const reg = args(container('node-driver-registrar'));
    expect(reg['--kubelet-registration-path']).toBe(`/var/lib/kubelet/plugins/${name}/csi.sock`);
    const pluginDir = (pod()['volumes'] as Obj[]).find((v) => v['name'] === 'plugin-dir')!;
    expect(pluginDir['hostPath']['path']).toBe(`/var/lib/kubelet/plugins/${name}`);
    // the registrar's own liveness probe names the same socket
    expect(container('node-driver-registrar')['livenessProbe']['exec']['command']).toContain(
      `--kubelet-registration-path=/var/lib/kubelet/plugins/${name}/csi.sock`,
    );
    const drivers = [
      ...all('PersistentVolume').map((pv) => pv['spec']['csi']['driver']),
      ...all('Pod').flatMap((p) => (p['spec']['volumes'] as Obj[]).filter((v) => v['csi']).map((v) => v['csi']['driver'])),
    ];
    expect(drivers.length).toBeGreaterThan(0);
    expect(new Set(drivers)).toEqual(new Set([name]));
  });

  it('the plugin socket: CSI_ENDPOINT, the registrar and the liveness probe agree, inside the plugin-dir mount', () => {
    const env = Object.fromEntries((container('cvmfs-thin')['env'] as Obj[]).map((e) => [e['name'], e]));
    expect(env['CSI_ENDPOINT']['value']).toBe('unix:///csi/csi.sock');
    expect(env['NODE_ID']['valueFrom']['fieldRef']['fieldPath']).toBe('spec.nodeName');
    expect(args(container('cvmfs-thin'))['--endpoint']).toBe('$(CSI_ENDPOINT)');
    for (const c of ['node-driver-registrar', 'liveness-probe']) expect(args(container(c))['--csi-address']).toBe('/csi/csi.sock');
    for (const c of pod()['containers'] as Obj[]) expect((c['volumeMounts'] as Obj[]).find((m) => m['name'] === 'plugin-dir')?.['mountPath']).toBe('/csi');
    const healthPort = args(container('liveness-probe'))['--health-port'];
    const port = (container('cvmfs-thin')['ports'] as Obj[]).find((p) => p['name'] === container('cvmfs-thin')['livenessProbe']['httpGet']['port']);
    expect(String(port?.['containerPort'])).toBe(healthPort);
  });

  it('DaemonSet: selector matches, every mount has a volume and every volume a mount, Bidirectional only when privileged', () => {
    expect(pod()).toBeDefined();
    const sel = ds()['spec']['selector']['matchLabels'] as Obj;
    expect(ds()['spec']['template']['metadata']['labels']).toMatchObject(sel);
    const volumes = new Set((pod()['volumes'] as Obj[]).map((v) => v['name'] as string));
    const used = new Set<string>();
    for (const c of pod()['containers'] as Obj[]) {
      for (const m of c['volumeMounts'] as Obj[]) {
        expect(volumes, `${c['name']} mounts ${m['name']}`).toContain(m['name']);
        used.add(m['name']);
        if (m['mountPropagation'] === 'Bidirectional') expect(c['securityContext']?.['privileged'], `${c['name']}: Bidirectional needs privileged`).toBe(true);
      }
    }
    expect([...volumes].filter((v) => !used.has(v))).toEqual([]);
    const mounts = Object.fromEntries((container('cvmfs-thin')['volumeMounts'] as Obj[]).map((m) => [m['mountPath'], m['mountPropagation'] ?? 'None']));
    expect(mounts).toMatchObject({
      '/var/lib/kubelet/pods': 'Bidirectional',
      '/var/lib/kubelet/plugins/kubernetes.io/csi': 'Bidirectional',
      '/cvmfs': 'HostToContainer',
    });
  });

  it('least privilege: a ServiceAccount of its own without token, and no Role at all (the plugin never calls the API)', () => {
    const sa = one('ServiceAccount');
    expect(pod()['serviceAccountName']).toBe(sa['metadata']['name']);
    expect(sa['metadata']['namespace']).toBe(ds()['metadata']['namespace']);
    expect(sa['automountServiceAccountToken']).toBe(false);
    expect(pod()['automountServiceAccountToken']).toBe(false);
    expect(docs.filter((d) => /Role/.test(d.doc['kind'] as string))).toEqual([]);
    expect(one('Namespace')['metadata']['labels']['pod-security.kubernetes.io/enforce']).toBe('privileged');
    for (const c of ['node-driver-registrar', 'liveness-probe'])
      expect(container(c)['securityContext']).toMatchObject({ privileged: false, allowPrivilegeEscalation: false });
  });

  it("the ConfigMap's csi.toml is a valid plugin config, mounted where --config points", () => {
    const cm = one('ConfigMap');
    const cfg = validateConfig(parseToml(cm['data']['csi.toml'] as string) as Record<string, unknown>, csiConfigSpec, 'csi.toml');
    expect(cfg.backend).toBe('host');
    expect(cfg['allow-ephemeral-client-config']).toBe(false);
    const vol = (pod()['volumes'] as Obj[]).find((v) => v['configMap']);
    expect(vol?.['configMap']['name']).toBe(cm['metadata']['name']);
    const mount = (container('cvmfs-thin')['volumeMounts'] as Obj[]).find((m) => m['name'] === vol?.['name']);
    expect(args(container('cvmfs-thin'))['--config']).toBe(`${mount?.['mountPath']}/csi.toml`);
    expect(cfg['state-dir']).toBe((container('cvmfs-thin')['volumeMounts'] as Obj[]).find((m) => m['name'] === 'state-dir')?.['mountPath']);
  });

  it('example volumes are ones the plugin accepts; whole-tree mounts use HostToContainer; inline volumes set no clientConfig', () => {
    for (const pv of all('PersistentVolume')) {
      expect(pv['spec']['accessModes']).toEqual(['ReadOnlyMany']);
      expect(pv['spec']['volumeMode']).toBe('Filesystem');
      for (const f of (pv['spec']['mountOptions'] ?? []) as string[]) expect(ACCEPTED_MOUNT_FLAGS).toContain(f);
      for (const k of Object.keys(pv['spec']['csi']['volumeAttributes'] ?? {})) expect(KNOWN_ATTRIBUTES).toContain(k);
      const pvc = all('PersistentVolumeClaim').find((c) => c['spec']['volumeName'] === pv['metadata']['name']);
      expect(pvc?.['spec']['accessModes']).toEqual(['ReadOnlyMany']);
      expect(pvc?.['spec']['storageClassName']).toBe('');
    }
    const wholeTree = new Set<string>();
    for (const pv of all('PersistentVolume'))
      if (!pv['spec']['csi']['volumeAttributes']?.['repository'])
        wholeTree.add(`pvc:${all('PersistentVolumeClaim').find((c) => c['spec']['volumeName'] === pv['metadata']['name'])?.['metadata']['name']}`);
    let checked = 0;
    for (const p of all('Pod')) {
      const vols = p['spec']['volumes'] as Obj[];
      for (const v of vols) {
        if (v['csi']) {
          for (const k of Object.keys(v['csi']['volumeAttributes'] ?? {})) expect(KNOWN_ATTRIBUTES.filter((a) => a !== 'clientConfig')).toContain(k);
        }
      }
      for (const c of p['spec']['containers'] as Obj[]) {
        for (const m of c['volumeMounts'] as Obj[]) {
          const v = vols.find((x) => x['name'] === m['name'])!;
          expect(v, `${p['metadata']['name']}: volume ${m['name']}`).toBeDefined();
          const tree =
            (v['csi'] && !v['csi']['volumeAttributes']?.['repository']) ||
            (v['persistentVolumeClaim'] && wholeTree.has(`pvc:${v['persistentVolumeClaim']['claimName']}`));
          if (tree) {
            expect(m['mountPropagation'], `${p['metadata']['name']}: ${m['name']} is the whole tree`).toBe('HostToContainer');
            checked++;
          }
          expect(m['readOnly']).toBe(true);
        }
      }
    }
    expect(checked).toBe(2);
  });
});
