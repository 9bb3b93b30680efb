// natsguard.wasm in V8 (node) behind a minimal proxy-wasm host: the module's own cost per frame
// (its buffer copy included), without Envoy, sockets or the other processes that make
// `make bench` noisy on shared cores. A development tool for optimising the data path; the
// figures users compare are Envoy's, in BENCHMARKS.md.
//
//   node --no-liftoff benches/v8/module.mjs [allow-all|restricted|stamped|signed] [payload bytes] [chunk bytes]
//
// `--no-liftoff`: proxy-wasm-cpp-host runs V8 with TurboFan only. For a profile, build the module
// without stripping (CARGO_PROFILE_RELEASE_STRIP=false scripts/build-wasm.sh) and run
// `perf record -F 5000 node --no-liftoff --perf-basic-prof benches/v8/module.mjs`.
// ROUNDS (environment) sets how many passes over the 4 MiB stream each of 25 timings makes.
// It also times CONNECT on fresh connections: without a token, with an RS256 JWT the VM never saw,
// and with one it verified before (a client reconnecting); the JWKS is inline.
import crypto from 'crypto';
import fs from 'fs';
import path from 'path';
import { fileURLToPath } from 'url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [policyName = 'allow-all', payloadArg, chunkArg] = process.argv.slice(2);
const payloadSize = Number(payloadArg || 128);
const chunkSize = Number(chunkArg || 65536);
const wasmPath = process.env.NATSGUARD_WASM || path.join(root, 'target/wasm32-wasip1/release/natsguard.wasm');
// The policies of benches/engine.rs: row 3's allow-all rule, and a restricted rule with deny
// entries and allow_responses (the decision cache and the delivery filter answer).
// Both accept an optional RS256 JWT (as `auth_token`) from an IdP whose key is made here.
const ISSUER = 'https://idp.bench.example';
const idp = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...idp.publicKey.export({ format: 'jwk' }), kid: 'bench', alg: 'RS256', use: 'sig' };
const spiffe = {
  spiffe: { required: true, trust_domains: ['cluster.local'] },
  jwt: {
    required: false,
    providers: [{ name: 'bench-idp', issuer: ISSUER, audiences: ['nats'], jwks: { keys: [jwk] }, algorithms: ['RS256'] }],
  },
};
const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
// Every token made is a new one (its jti), so "fresh" never meets a token the VM remembers.
let tokensMade = 0;
function token(user) {
  const now = Math.floor(Date.now() / 1000);
  const signed = `${b64url({ alg: 'RS256', typ: 'JWT', kid: 'bench' })}.${b64url({ iss: ISSUER, sub: `user-${user}`, aud: 'nats', iat: now, exp: now + 3600, jti: `${tokensMade++}` })}`;
  return `${signed}.${crypto.sign('sha256', Buffer.from(signed), idp.privateKey).toString('base64url')}`;
}
const policies = {
  'allow-all': { identity: spiffe, default_action: 'deny', rules: [{ name: 'everyone', from: { principals: ['*'] } }] },
  restricted: {
    identity: spiffe,
    default_action: 'deny',
    rules: [{
      name: 'publisher',
      from: { principals: ['cluster.local/ns/billing/sa/publisher'] },
      permissions: {
        publish: { allow: ['bench.>', '_INBOX.>'], deny: ['bench.admin.>'] },
        subscribe: { allow: ['bench.>', '_INBOX.>'], deny: ['bench.secret.*'] },
        allow_responses: { max: 1, expires: '5s' },
      },
    }],
  },
};
// Provenance (docs/provenance.md): allow-all with every benchmark subject stamped, and signed
// (the user nkey seed make bench's rows 7 and 8 use).
policies.stamped = { ...policies['allow-all'], provenance: { subjects: ['bench.>'] } };
policies.signed = { ...policies['allow-all'], provenance: { subjects: ['bench.>'], sign: { seed: 'SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU' } } };
if (!policies[policyName]) throw new Error(`policy: one of ${Object.keys(policies).join(', ')}`);
const policy = Buffer.from(JSON.stringify(policies[policyName]));
const SPIFFE = Buffer.from('spiffe://cluster.local/ns/billing/sa/publisher');

let instance, memory;
const buffers = { 2: Buffer.alloc(0), 3: Buffer.alloc(0), 7: policy, 6: Buffer.alloc(0) };
let replaced = 0;
const u8 = () => new Uint8Array(memory.buffer);
const dv = () => new DataView(memory.buffer);
const str = (ptr, len) => Buffer.from(memory.buffer, ptr, len).toString();
function give(bytes, retPtr, retSize) {
  const ptr = instance.exports.proxy_on_memory_allocate(bytes.length);
  u8().set(bytes, ptr);
  dv().setUint32(retPtr, ptr, true);
  dv().setUint32(retSize, bytes.length, true);
  return 0;
}
let metricId = 1;
const now = () => BigInt(Date.now()) * 1000000n;
const env = {
  proxy_log: (level, ptr, len) => { if (process.env.LOG) console.error('log', level, str(ptr, len)); return 0; },
  proxy_get_buffer_bytes: (type, start, len, retPtr, retSize) => {
    const buf = buffers[type];
    if (!buf) return 1;
    // Sizes arrive as signed i32: `usize::MAX` ("all of it") is -1.
    return give(buf.subarray(start, Math.min(buf.length, start + (len >>> 0))), retPtr, retSize);
  },
  proxy_set_buffer_bytes: (type, start, size, ptr, len) => { replaced++; return 0; },
  proxy_get_property: (ptr, len, retPtr, retSize) => {
    const path = str(ptr, len);
    if (path.includes('uri_san_peer_certificate')) return give(SPIFFE, retPtr, retSize);
    return 1;
  },
  proxy_set_property: () => 0,
  proxy_define_metric: (type, ptr, len, retPtr) => { dv().setUint32(retPtr, metricId++, true); return 0; },
  proxy_increment_metric: () => 0,
  proxy_get_current_time_nanoseconds: (retPtr) => { dv().setBigUint64(retPtr, now(), true); return 0; },
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_get_shared_data: () => 1,
  proxy_set_shared_data: () => 0,
  proxy_close_stream: () => { console.error('close_stream'); return 0; },
  proxy_continue_stream: () => 0,
  proxy_done: () => 0,
};
const wasi = {
  random_get: (ptr, len) => { u8().fill(7, ptr, ptr + len); return 0; },
  environ_sizes_get: (a, b) => { dv().setUint32(a, 0, true); dv().setUint32(b, 0, true); return 0; },
  environ_get: () => 0,
  clock_time_get: (id, precision, retPtr) => { dv().setBigUint64(retPtr, now(), true); return 0; },
  fd_write: (fd, iovs, count, retPtr) => {
    let total = 0;
    for (let i = 0; i < count; i++) total += dv().getUint32(iovs + 8 * i + 4, true);
    dv().setUint32(retPtr, total, true);
    return 0;
  },
  proc_exit: (code) => { throw new Error('proc_exit ' + code); },
};
const module = new WebAssembly.Module(fs.readFileSync(wasmPath));
const imports = { env: {}, wasi_snapshot_preview1: wasi };
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === 'env') imports.env[imp.name] = env[imp.name] || (() => { throw new Error('unexpected ' + imp.name); });
}
instance = new WebAssembly.Instance(module, imports);
memory = instance.exports.memory;
const x = instance.exports;
x._initialize();
x.proxy_on_context_create(1, 0);
x.proxy_on_vm_start(1, 0);
if (x.proxy_on_configure(1, policy.length) !== 1) throw new Error('configure failed');
x.proxy_on_context_create(2, 1);
x.proxy_on_new_connection(2);

function feed(type, bytes, id = 2) {
  buffers[type] = bytes;
  return type === 2 ? x.proxy_on_downstream_data(id, bytes.length, 0) : x.proxy_on_upstream_data(id, bytes.length, 0);
}

// CONNECTs on fresh connections, with no token, with tokens the VM never saw (`fresh`), or with
// tokens it verified on earlier connections (`repeated`: clients reconnecting): µs per CONNECT,
// the best of `reps` passes over `count` connections.
let nextContext = 3;
function connects(tokenKind, count = 200, reps = 15) {
  const repeated = tokenKind === 'repeated' ? Array.from({ length: count }, (_, user) => token(user)) : null;
  if (repeated) connectWith(repeated);
  let best = Infinity;
  for (let rep = 0; rep < reps; rep++) {
    const tokens = tokenKind === 'fresh' ? Array.from({ length: count }, (_, user) => token(user)) : repeated || Array(count).fill(null);
    const t0 = process.hrtime.bigint();
    connectWith(tokens);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / count / 1000);
  }
  return best;
}
function connectWith(tokens) {
  for (let i = 0; i < tokens.length; i++) {
    const id = nextContext++;
    x.proxy_on_context_create(id, 1);
    x.proxy_on_new_connection(id);
    feed(3, Buffer.from('INFO {"server_id":"S","headers":true,"max_payload":1048576} \r\n'), id);
    const auth = tokens[i] ? `,"auth_token":"${tokens[i]}"` : '';
    feed(2, Buffer.from(`CONNECT {"verbose":false${auth}}\r\nPING\r\n`), id);
    x.proxy_on_log(id);
    x.proxy_on_delete(id);
  }
}
const connectFigures = () => `CONNECT ${connects('none').toFixed(1)} µs without a token, ${connects('fresh', 20, 5).toFixed(0)} µs with an RS256 JWT, ${connects('repeated').toFixed(1)} µs with an RS256 JWT already verified (best of 15 passes over 200 connections; fresh tokens 5 over 20)`;
connects('fresh', 5, 1);
console.log(`${policyName}: ${connectFigures()} (fresh VM)`);
feed(3, Buffer.from('INFO {"server_id":"S","headers":true,"max_payload":1048576} \r\n'));
// A wildcard SUB: under the restricted policy it arms the delivery filter.
feed(2, Buffer.from('CONNECT {"verbose":false,"headers":true}\r\nSUB bench.* 1\r\n'));

function stream(line) {
  const frame = Buffer.concat([Buffer.from(line), Buffer.alloc(payloadSize, 120), Buffer.from('\r\n')]);
  const frames = Math.max(16, Math.floor(4 * 1024 * 1024 / frame.length));
  const all = Buffer.concat(Array(frames).fill(frame));
  const chunks = [];
  for (let at = 0; at < all.length; at += chunkSize) chunks.push(all.subarray(at, at + chunkSize));
  return { chunks, frames };
}
for (const [name, type, line] of [
  ['client PUB', 2, `PUB bench.data ${payloadSize}\r\n`],
  ['server MSG', 3, `MSG bench.data 1 ${payloadSize}\r\n`],
]) {
  const { chunks, frames } = stream(line);
  for (let warm = 0; warm < 3; warm++) for (const c of chunks) feed(type, c);
  const rounds = Number(process.env.ROUNDS || 10);
  let best = Infinity;
  for (let rep = 0; rep < 25; rep++) {
    replaced = 0;
    const t0 = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) for (const c of chunks) feed(type, c);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / (rounds * frames));
  }
  console.log(`${policyName}: ${name} ${payloadSize} B, ${chunkSize} B chunks: ${best.toFixed(1)} ns/frame (best of 25; ${replaced} of ${rounds * chunks.length} chunks replaced)`);
}
console.log(`${policyName}: ${connectFigures()} (after the streams above)`);
