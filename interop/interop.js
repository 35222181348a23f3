'use strict'
// Interop test: a real PDS + PLC (@atproto/dev-env) crawled by the real
// relay binary; real consumers (@atproto/sync in authenticated mode,
// @skyware/firehose, and a raw frame decoder) read the relay's firehose live
// and replayed from cursor 0, and are compared with the PDS's own firehose.
//
// Run through run.sh (it installs the pinned Node 22 and packages, builds
// the relay and sets RELAY_BIN). Environment:
//   RELAY_BIN          the relay binary (required)
//   INTEROP_DROP_NTH   drop the Nth scenario frame (counted from the first
//                      account created after the canaries, in seq order) on
//                      the consumer side of every relay consumer, to prove
//                      the test fails (for @atproto/sync: the Nth seq it
//                      yields events for; it yields none for empty commits)
//   INTEROP_KEEP       keep the temp dir (relay data, logs)
const guard = require('./guard.js')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const net = require('node:net')
const zlib = require('node:zlib')
const { spawn } = require('node:child_process')

const { TestNetworkNoAppView } = require('@atproto/dev-env')
const { AtpAgent } = require('@atproto/api')
const { Firehose: SyncFirehose } = require('@atproto/sync')
const { IdResolver } = require('@atproto/identity')
const { Firehose: SkywareFirehose } = require('@skyware/firehose')
const WebSocket = require('ws')
const { decodeFirst, fromBytes } = require('@atcute/cbor')

const DROP_NTH = Number(process.env.INTEROP_DROP_NTH || 0)
const t0 = Date.now()
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1) + 's'
const log = (...a) => console.log(`[interop ${elapsed()}]`, ...a)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function until(what, timeoutMs, cond, stepMs = 50) {
  const end = Date.now() + timeoutMs
  for (;;) {
    if (await cond()) return true
    if (Date.now() > end) return false
    await sleep(stepMs)
  }
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

// A 4x4 RGB PNG, built here (dev-env 0.6.7's own avatar asset is missing).
function smallPNG() {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4)
    len.writeUInt32BE(data.length)
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data])
    const crc = Buffer.alloc(4)
    crc.writeUInt32BE(zlib.crc32(td) >>> 0)
    return Buffer.concat([len, td, crc])
  }
  const w = 4, h = 4
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // RGB
  const rows = []
  for (let y = 0; y < h; y++) {
    const row = [0] // filter none
    for (let x = 0; x < w; x++) row.push(40 * x, 40 * y, 200)
    rows.push(Buffer.from(row))
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

// ---- frame decoding (raw consumers) ----

function readVarint(buf, pos) {
  let n = 0, shift = 0
  for (;;) {
    const b = buf[pos++]
    n += (b & 0x7f) * 2 ** shift
    if (b < 0x80) return [n, pos]
    shift += 7
  }
}

// carRoot returns the root CID of a CAR v1 (the signed commit of a #sync).
function carRoot(bytes) {
  if (!bytes || bytes.length === 0) return ''
  const [len, pos] = readVarint(bytes, 0)
  const [header] = decodeFirst(bytes.subarray(pos, pos + len))
  return header.roots?.[0]?.$link ?? ''
}

const link = (v) => (v && v.$link) || ''
const bytesOf = (v) => (v && v.$bytes !== undefined ? fromBytes(v) : v instanceof Uint8Array ? v : new Uint8Array())

// key is the normalized form compared per DID: what a consumer that tracks
// repo state needs to be identical.
function keyCommit(rev, commit, ops) {
  return `#commit rev=${rev} cid=${commit} ops=[${ops.map((o) => `${o.action} ${o.path} ${o.cid || '-'}`).join(', ')}]`
}
const keySync = (rev, cid) => `#sync rev=${rev} cid=${cid}`
const keyIdentity = (handle) => `#identity handle=${handle ?? '-'}`
const keyAccount = (active, status) => `#account active=${active} status=${status ?? '-'}`

// decodeFrame turns one WebSocket message into a normalized event.
function decodeFrame(data) {
  const buf = new Uint8Array(data)
  const [header, rest] = decodeFirst(buf)
  const [body, rest2] = decodeFirst(rest)
  if (rest2.length !== 0) throw new Error('excess bytes after frame body')
  if (header.op === -1) throw new Error(`error frame ${body.error}: ${body.message ?? ''}`)
  const t = header.t
  const ev = { t, seq: body.seq, op: {} }
  switch (t) {
    case '#commit': {
      ev.did = body.repo
      const ops = (body.ops || []).map((o) => ({ action: o.action, path: o.path, cid: link(o.cid) }))
      ev.key = keyCommit(body.rev, link(body.commit), ops)
      for (const o of ops) ev.op[o.action] = (ev.op[o.action] || 0) + 1
      ev.nops = ops.length
      ev.blocks = Buffer.from(bytesOf(body.blocks)).toString('base64')
      ev.rev = body.rev
      break
    }
    case '#sync':
      ev.did = body.did
      ev.key = keySync(body.rev, carRoot(bytesOf(body.blocks)))
      ev.blocks = Buffer.from(bytesOf(body.blocks)).toString('base64')
      ev.rev = body.rev
      break
    case '#identity':
      ev.did = body.did
      ev.key = keyIdentity(body.handle)
      break
    case '#account':
      ev.did = body.did
      ev.key = keyAccount(body.active, body.status)
      break
    case '#info':
      throw new Error(`#info ${body.name}: ${body.message ?? ''}`)
    default:
      throw new Error(`unknown frame type ${t}`)
  }
  ev.body = body
  const { seq: _seq, ...others } = body
  ev.full = canonical(others)
  return ev
}

// canonical is a stable JSON form of a decoded body: sorted keys, CIDs as
// strings, bytes as base64.
function canonical(v) {
  const norm = (x) => {
    if (x === null || typeof x !== 'object') return x
    if (x.$link !== undefined) return { $link: x.$link }
    if (x.$bytes !== undefined || x instanceof Uint8Array) return { $bytes: Buffer.from(bytesOf(x)).toString('base64') }
    if (Array.isArray(x)) return x.map(norm)
    const out = {}
    for (const k of Object.keys(x).sort()) out[k] = norm(x[k])
    return out
  }
  return JSON.stringify(norm(v))
}

// ---- consumers ----
// Each consumer keeps an ordered list of normalized events (one per frame)
// and its errors. isScenario(did) tells scenario DIDs from canaries, for
// the deliberate drop.

class Consumer {
  constructor(name, isScenario, drop) {
    this.name = name
    this.events = []
    this.errors = []
    this.isScenario = isScenario
    this.drop = drop
    this.scenarioFrames = 0
    this.dropped = null
  }
  // shouldDrop counts scenario frames and says whether this one is the Nth.
  shouldDrop(did, desc) {
    if (!this.drop || !this.isScenario(did)) return false
    this.scenarioFrames++
    if (this.scenarioFrames === this.drop) {
      this.dropped = desc
      return true
    }
    return false
  }
  lastSeq() {
    return this.events.length ? this.events[this.events.length - 1].seq : 0
  }
}

class RawConsumer extends Consumer {
  constructor(name, url, isScenario, drop) {
    super(name, isScenario, drop)
    this.ws = new WebSocket(url)
    this.ws.binaryType = 'nodebuffer'
    this.ws.on('message', (data, isBinary) => {
      if (!isBinary) {
        this.errors.push('text frame')
        return
      }
      let ev
      try {
        ev = decodeFrame(data)
      } catch (err) {
        this.errors.push(String(err.message || err))
        return
      }
      if (this.shouldDrop(ev.did, `seq ${ev.seq} ${ev.did} ${ev.key}`)) return
      this.events.push(ev)
    })
    this.ws.on('error', (err) => this.errors.push(`websocket: ${err.message}`))
    this.opened = new Promise((resolve) => this.ws.once('open', resolve))
  }
  close() {
    this.ws.close()
  }
}

class SkywareConsumer extends Consumer {
  constructor(name, relay, cursor, isScenario, drop) {
    super(name, isScenario, drop)
    this.fh = new SkywareFirehose({ relay, cursor, autoReconnect: false, ws: WebSocket })
    const push = (did, seq, t, key, op) => {
      if (this.shouldDrop(did, `seq ${seq} ${did} ${key}`)) return
      this.events.push({ t, seq, did, key, op: op || {} })
    }
    this.fh.on('commit', (m) => {
      const ops = m.ops.map((o) => ({ action: o.action, path: o.path, cid: o.cid }))
      const op = {}
      for (const o of ops) op[o.action] = (op[o.action] || 0) + 1
      push(m.repo, m.seq, '#commit', keyCommit(m.rev, m.commit, ops), op)
    })
    this.fh.on('sync', (m) => push(m.did, m.seq, '#sync', keySync(m.rev, carRoot(m.blocks))))
    this.fh.on('identity', (m) => push(m.did, m.seq, '#identity', keyIdentity(m.handle)))
    this.fh.on('account', (m) => push(m.did, m.seq, '#account', keyAccount(m.active, m.status)))
    this.fh.on('info', (m) => this.errors.push(`#info ${m.name}`))
    this.fh.on('unknown', (m) => this.errors.push(`unknown message ${JSON.stringify(m).slice(0, 200)}`))
    this.fh.on('error', ({ error }) => this.errors.push(`error: ${error?.message || error}`))
    this.fh.on('websocketError', ({ error }) => this.errors.push(`websocket error: ${error?.message || error}`))
    this.opened = new Promise((resolve) => this.fh.on('open', resolve))
    this.fh.start()
  }
  close() {
    this.fh.close()
  }
}

// AtSyncConsumer is @atproto/sync's Firehose in authenticated mode: it
// verifies commit signatures and MST proofs against keys from the PLC and
// drops ops that fail (silently: hence the op counts). It yields one event
// per op; consecutive events with one seq are folded back into a commit.
class AtSyncConsumer extends Consumer {
  constructor(name, service, cursor, idResolver, isScenario, drop) {
    super(name, isScenario, drop)
    this.cursor = cursor
    this.skipSeq = null
    this.fh = new SyncFirehose({
      idResolver,
      service,
      getCursor: () => (this.events.length ? this.lastSeq() : this.cursor),
      subscriptionReconnectDelay: 200,
      onError: (err) => this.errors.push(`${err.name}: ${err.message}${err.cause ? ' (' + (err.cause.message || err.cause) + ')' : ''}`),
      handleEvent: async (evt) => this.handle(evt),
    })
    this.fh.start()
  }
  handle(evt) {
    if (this.skipSeq === evt.seq) return
    const last = this.events[this.events.length - 1]
    if (evt.event === 'create' || evt.event === 'update' || evt.event === 'delete') {
      const op = { action: evt.event, path: `${evt.collection}/${evt.rkey}`, cid: evt.event === 'delete' ? '' : evt.cid.toString() }
      if (last && last.t === '#commit' && last.seq === evt.seq) {
        last.ops.push(op)
        last.op[op.action] = (last.op[op.action] || 0) + 1
        last.key = keyCommit(last.rev, last.commit, last.ops)
        return
      }
      if (this.shouldDrop(evt.did, `seq ${evt.seq} ${evt.did} #commit rev=${evt.rev}`)) {
        this.skipSeq = evt.seq
        return
      }
      this.events.push({ t: '#commit', seq: evt.seq, did: evt.did, rev: evt.rev, commit: evt.commit.toString(), ops: [op], op: { [op.action]: 1 }, key: keyCommit(evt.rev, evt.commit.toString(), [op]) })
      return
    }
    let e
    if (evt.event === 'sync') e = { t: '#sync', key: keySync(evt.rev, evt.cid.toString()) }
    else if (evt.event === 'identity') e = { t: '#identity', key: '#identity' } // handle is verified at read time, not as of the event
    else if (evt.event === 'account') e = { t: '#account', key: keyAccount(evt.active, evt.status) }
    else {
      this.errors.push(`unknown event ${evt.event}`)
      return
    }
    if (this.shouldDrop(evt.did, `seq ${evt.seq} ${evt.did} ${e.key}`)) return
    this.events.push({ ...e, seq: evt.seq, did: evt.did, op: {} })
  }
  close() {
    return this.fh.destroy()
  }
}

// What @atproto/sync yields for a ground-truth event: nothing for a commit
// without ops, no handle on #identity.
function atSyncView(ev) {
  if (ev.t === '#commit' && ev.nops === 0) return null
  if (ev.t === '#identity') return { ...ev, key: '#identity' }
  return ev
}

// ---- comparison ----

function countsOf(events) {
  const c = {}
  for (const e of events) {
    c[e.t] = (c[e.t] || 0) + 1
    for (const [a, n] of Object.entries(e.op || {})) c[`op:${a}`] = (c[`op:${a}`] || 0) + n
  }
  return c
}

function byDID(events, dids) {
  const m = new Map(dids.map((d) => [d, []]))
  for (const e of events) if (m.has(e.did)) m.get(e.did).push(e)
  return m
}

// compare checks one consumer against the truth; returns failure lines.
function compare(consumer, truth, dids, view) {
  const fails = []
  const want = truth.map(view).filter(Boolean).filter((e) => dids.includes(e.did))
  const got = consumer.events.filter((e) => dids.includes(e.did))
  if (consumer.errors.length) fails.push(`${consumer.name}: ${consumer.errors.length} consumer errors, first: ${consumer.errors[0]}`)
  const wc = countsOf(want), gc = countsOf(got)
  for (const k of new Set([...Object.keys(wc), ...Object.keys(gc)])) {
    if ((wc[k] || 0) !== (gc[k] || 0)) fails.push(`${consumer.name}: count ${k} ${gc[k] || 0}, PDS ${wc[k] || 0}`)
  }
  // seq strictly increasing over everything the consumer saw.
  let prev = 0
  for (const e of consumer.events) {
    if (!(e.seq > prev)) {
      fails.push(`${consumer.name}: seq ${e.seq} after ${prev}`)
      break
    }
    prev = e.seq
  }
  const w = byDID(want, dids), g = byDID(got, dids)
  for (const did of dids) {
    const a = w.get(did), b = g.get(did)
    const n = Math.max(a.length, b.length)
    for (let i = 0; i < n; i++) {
      const ka = a[i]?.key, kb = b[i]?.key
      if (ka !== kb) {
        fails.push(`${consumer.name}: ${did} first difference at event ${i}: relay ${kb === undefined ? '(none)' : `seq ${b[i].seq} ${kb}`}, PDS ${ka === undefined ? '(none)' : `seq ${a[i].seq} ${ka}`}`)
        break
      }
      // The raw consumer also compares the whole body but seq (blocks,
      // since, prevData, time, blobs...) with the PDS's frame.
      if (a[i].full !== undefined && b[i].full !== undefined && a[i].full !== b[i].full) {
        fails.push(`${consumer.name}: ${did} event ${i} (${ka}): body differs from the PDS's frame:\n      relay ${b[i].full.slice(0, 600)}\n      PDS   ${a[i].full.slice(0, 600)}`)
        break
      }
    }
  }
  return fails
}

function summary(events, dids) {
  const c = countsOf(events.filter((e) => dids.includes(e.did)))
  return Object.keys(c).sort().map((k) => `${k}=${c[k]}`).join(' ')
}

// ---- main ----

async function main() {
  const relayBin = process.env.RELAY_BIN
  if (!relayBin) throw new Error('RELAY_BIN is not set (run interop/run.sh)')
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-interop-'))
  const cleanups = []
  const fails = []
  let relayLog = path.join(tmp, 'relay.log')
  try {
    // 1. PDS + PLC, bound to loopback.
    const network = await TestNetworkNoAppView.create({})
    cleanups.push(() => network.close())
    const pdsURL = network.pds.url
    const pdsPort = network.pds.port
    const plcPort = network.plc.port
    const plcURL = `http://127.0.0.1:${plcPort}`
    const bound = guard.listening()
    for (const a of bound) {
      if (a.address !== '127.0.0.1') throw new Error(`a dev-env server listens on ${a.address}:${a.port}, not 127.0.0.1`)
    }
    for (const p of [pdsPort, plcPort]) {
      if (!bound.some((a) => a.port === p)) throw new Error(`port ${p} is not among the loopback-bound servers ${JSON.stringify(bound)}`)
    }
    log(`PDS ${pdsURL} and PLC ${plcURL}; bound: ${bound.map((a) => `${a.address}:${a.port}`).join(' ')}`)

    // 2. The PDS's own firehose is the ground truth, connected before any
    // account exists.
    const truthLive = new RawConsumer('pds', `ws://127.0.0.1:${pdsPort}/xrpc/com.atproto.sync.subscribeRepos`, () => false, 0)
    cleanups.push(() => truthLive.close())
    await truthLive.opened

    // 3. The relay binary, fresh data dir, loopback ports.
    const relayPort = await freePort()
    const metricsPort = await freePort()
    const relayOut = fs.openSync(relayLog, 'w')
    const relay = spawn(relayBin, ['serve'], {
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME || tmp,
        RELAY_PORT: `127.0.0.1:${relayPort}`,
        RELAY_METRICS_PORT: `127.0.0.1:${metricsPort}`,
        RELAY_DATA_DIR: path.join(tmp, 'data'),
        RELAY_PLC_HOST: plcURL,
        RELAY_ALLOW_INSECURE_HOSTS: 'true',
        RELAY_UPSTREAM: 'none',
        RELAY_LOG_LEVEL: 'info',
      },
      stdio: ['ignore', relayOut, relayOut],
    })
    let relayExit = null
    relay.on('exit', (code, sig) => (relayExit = `exit ${code ?? sig}`))
    cleanups.push(async () => {
      if (relayExit) return
      relay.kill('SIGTERM')
      await until('relay exit', 10000, () => relayExit !== null)
      if (!relayExit) relay.kill('SIGKILL')
    })
    const relayHTTP = `http://127.0.0.1:${relayPort}`
    const relayWS = `ws://127.0.0.1:${relayPort}`
    const up = await until('relay health', 20000, async () => {
      if (relayExit) throw new Error(`relay ${relayExit} at start; see ${relayLog}`)
      try {
        return (await fetch(`http://127.0.0.1:${metricsPort}/_healthz`)).ok
      } catch {
        return false
      }
    }, 100)
    if (!up) throw new Error('relay did not become healthy in 20 s')
    log(`relay up on ${relayHTTP} (metrics 127.0.0.1:${metricsPort}), data ${path.join(tmp, 'data')}`)

    // 4. Relay consumers, live, connected before any traffic.
    const canaries = new Set()
    const scenarioDIDs = []
    // Drop counting (INTEROP_DROP_NTH) starts with the scenario and skips
    // canaries, so the Nth frame is the same one live and replayed.
    let scenarioStarted = false
    const isScenario = (did) => scenarioStarted && !!did && !canaries.has(did)
    const idResolver = new IdResolver({ plcUrl: plcURL, fetch: globalThis.fetch })
    // .test handles resolve only through the PDS.
    idResolver.handle.resolve = async (handle) => {
      const res = await fetch(`${pdsURL}/xrpc/com.atproto.identity.resolveHandle?handle=${encodeURIComponent(handle)}`)
      return res.ok ? (await res.json()).did : undefined
    }
    const live = [
      new RawConsumer('raw-live', `${relayWS}/xrpc/com.atproto.sync.subscribeRepos`, isScenario, DROP_NTH),
      new SkywareConsumer('skyware-live', relayWS, '', isScenario, DROP_NTH),
      new AtSyncConsumer('atsync-live', relayWS, undefined, idResolver, isScenario, DROP_NTH),
    ]
    for (const c of live) cleanups.push(() => c.close())
    await Promise.all(live.filter((c) => c.opened).map((c) => c.opened))
    await sleep(300) // @atproto/sync has no open event

    // 5. Crawl the PDS with its port (it announces itself without one).
    const crawl = await fetch(`${relayHTTP}/xrpc/com.atproto.sync.requestCrawl`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ hostname: `localhost:${pdsPort}` }),
    })
    if (!crawl.ok) throw new Error(`requestCrawl: ${crawl.status} ${await crawl.text()}`)

    const png = smallPNG()
    const agents = {}
    const newAccount = async (name) => {
      const agent = new AtpAgent({ service: pdsURL })
      await agent.createAccount({ email: `${name}@example.com`, handle: `${name}.test`, password: `pw-${name}` })
      agents[name] = agent
      return agent
    }

    // 6. Canaries until one arrives through the relay (it subscribes live).
    let arrived = false
    for (let i = 0; i < 40 && !arrived; i++) {
      const a = await newAccount(`canary${i}`)
      canaries.add(a.session.did)
      arrived = await until('canary', 1000, () => live[0].events.some((e) => canaries.has(e.did)))
    }
    if (!arrived) throw new Error(`no canary came through the relay; see ${relayLog}`)
    log(`canary arrived after ${canaries.size} account(s)`)

    // 7. The scenario, through the PDS's own API.
    const tScenario = Date.now()
    scenarioStarted = true
    const names = ['alice', 'bob', 'carol', 'dave']
    for (const n of names) {
      const a = await newAccount(n)
      scenarioDIDs.push(a.session.did)
    }
    const did = (n) => agents[n].session.did
    const repo = (n) => agents[n].com.atproto.repo
    const create = async (n, collection, record) => (await repo(n).createRecord({ repo: did(n), collection, record: { $type: collection, ...record } })).data
    const del = async (n, uri) => {
      const [, , , collection, rkey] = uri.split('/')
      await repo(n).deleteRecord({ repo: did(n), collection, rkey })
    }
    const now = () => new Date().toISOString()
    const ref = (r) => ({ uri: r.uri, cid: r.cid })

    // Profile with a blob.
    const blob = (await repo('alice').uploadBlob(png, { encoding: 'image/png' })).data.blob
    await repo('alice').putRecord({ repo: did('alice'), collection: 'app.bsky.actor.profile', rkey: 'self', record: { $type: 'app.bsky.actor.profile', displayName: 'Alice', description: 'interop', avatar: blob } })
    await repo('bob').putRecord({ repo: did('bob'), collection: 'app.bsky.actor.profile', rkey: 'self', record: { $type: 'app.bsky.actor.profile', displayName: 'Bob' } })
    // Posts, replies, likes, reposts, follows.
    const p1 = await create('alice', 'app.bsky.feed.post', { text: 'hello from alice', createdAt: now() })
    const p2 = await create('alice', 'app.bsky.feed.post', { text: 'second post', createdAt: now() })
    const p3 = await create('bob', 'app.bsky.feed.post', { text: 'bob here', createdAt: now() })
    const r1 = await create('bob', 'app.bsky.feed.post', { text: 'reply to alice', createdAt: now(), reply: { root: ref(p1), parent: ref(p1) } })
    await create('carol', 'app.bsky.feed.post', { text: 'reply to bob', createdAt: now(), reply: { root: ref(p1), parent: ref(r1) } })
    const l1 = await create('carol', 'app.bsky.feed.like', { subject: ref(p1), createdAt: now() })
    await create('dave', 'app.bsky.feed.like', { subject: ref(p3), createdAt: now() })
    await create('dave', 'app.bsky.feed.repost', { subject: ref(p1), createdAt: now() })
    const rp2 = await create('carol', 'app.bsky.feed.repost', { subject: ref(p3), createdAt: now() })
    const f1 = await create('alice', 'app.bsky.graph.follow', { subject: did('bob'), createdAt: now() })
    const f2 = await create('alice', 'app.bsky.graph.follow', { subject: did('carol'), createdAt: now() })
    await create('bob', 'app.bsky.graph.follow', { subject: did('alice'), createdAt: now() })
    await create('dave', 'app.bsky.graph.follow', { subject: did('alice'), createdAt: now() })
    // Unfollow and deletes.
    await del('alice', f2.uri)
    await del('carol', l1.uri)
    await del('carol', rp2.uri)
    await del('alice', p2.uri)
    void f1
    // One commit with create + update + delete.
    const p4 = await create('alice', 'app.bsky.feed.post', { text: 'to be deleted in applyWrites', createdAt: now() })
    await repo('alice').applyWrites({
      repo: did('alice'),
      writes: [
        { $type: 'com.atproto.repo.applyWrites#create', collection: 'app.bsky.feed.post', value: { $type: 'app.bsky.feed.post', text: 'created in applyWrites', createdAt: now() } },
        { $type: 'com.atproto.repo.applyWrites#update', collection: 'app.bsky.actor.profile', rkey: 'self', value: { $type: 'app.bsky.actor.profile', displayName: 'Alice (updated)', avatar: blob } },
        { $type: 'com.atproto.repo.applyWrites#delete', collection: 'app.bsky.feed.post', rkey: p4.uri.split('/').pop() },
      ],
    })
    // Handle change.
    await agents.carol.com.atproto.identity.updateHandle({ handle: 'carol2.test' })
    await create('carol', 'app.bsky.feed.post', { text: 'new handle', createdAt: now() })
    // Deactivate, check, reactivate, post after reactivation.
    await create('dave', 'app.bsky.feed.post', { text: 'before deactivation', createdAt: now() })
    await agents.dave.com.atproto.server.deactivateAccount({})
    const daveInactive = await until('relay sees dave deactivated', 15000, () =>
      live[0].events.some((e) => e.did === did('dave') && e.t === '#account' && e.body.active === false))
    if (!daveInactive) fails.push('relay: no #account active=false for dave within 15 s of deactivation')
    const statusWhileDeactivated = await compareRepoStatus(pdsURL, relayHTTP, [did('dave')], 'while deactivated')
    fails.push(...statusWhileDeactivated.fails)
    await agents.dave.com.atproto.server.activateAccount()
    await create('dave', 'app.bsky.feed.post', { text: 'after reactivation', createdAt: now() })
    await create('bob', 'app.bsky.feed.like', { subject: ref(p1), createdAt: now() })
    await network.processAll()
    const scenarioSecs = (Date.now() - tScenario) / 1000

    // 8. Settle: the PDS's stream is quiet, and every relay consumer has the
    // PDS's last event of every scenario DID.
    let lastLen = -1
    await until('PDS stream quiet', 10000, async () => {
      const quiet = truthLive.events.length === lastLen
      lastLen = truthLive.events.length
      return quiet
    }, 1000)
    const truth = truthLive.events.filter((e) => !canaries.has(e.did))
    const lastOf = new Map()
    for (const e of truth) lastOf.set(e.did, e)
    const caughtUp = (c, view) => scenarioDIDs.every((d) => {
      const want = [...truth].reverse().map(view).find((e) => e && e.did === d)
      if (!want) return true
      return c.events.some((e) => e.did === d && e.key === want.key)
    })
    const viewOf = (c) => (c instanceof AtSyncConsumer ? atSyncView : (e) => e)
    await until('live consumers caught up', 20000, () => live.every((c) => caughtUp(c, viewOf(c))), 100)
    await sleep(500) // anything extra the relay would send shows up here
    const relayHead = Math.max(...live.map((c) => c.lastSeq()))
    log(`scenario took ${scenarioSecs.toFixed(1)} s; PDS sent ${truthLive.events.length} events (${truth.length} scenario); relay head seq ${relayHead}`)

    // 9. Replay from cursor 0.
    const replay = [
      new RawConsumer('raw-replay', `${relayWS}/xrpc/com.atproto.sync.subscribeRepos?cursor=0`, isScenario, DROP_NTH),
      new SkywareConsumer('skyware-replay', relayWS, '0', isScenario, DROP_NTH),
      new AtSyncConsumer('atsync-replay', relayWS, 0, idResolver, isScenario, DROP_NTH),
    ]
    for (const c of replay) cleanups.push(() => c.close())
    await until('replay consumers caught up', 20000, () => replay.every((c) => c.lastSeq() >= relayHead || (c instanceof AtSyncConsumer && caughtUp(c, atSyncView))), 100)
    await sleep(500)

    // 10. Compare.
    for (const c of [...live, ...replay]) {
      fails.push(...compare(c, truth, scenarioDIDs, viewOf(c)))
      if (c.dropped) log(`${c.name}: deliberately dropped ${c.dropped}`)
    }
    const api = await compareSyncAPI(pdsURL, relayHTTP, scenarioDIDs)
    fails.push(...api.fails)
    log(`PDS scenario events: ${summary(truth, scenarioDIDs)}`)
    for (const c of [...live, ...replay]) log(`${c.name.padEnd(15)} ${summary(c.events, scenarioDIDs)}; errors ${c.errors.length}`)
    log(`sync API compared: ${api.checked} answers; getRepoStatus while deactivated: ${JSON.stringify(statusWhileDeactivated.relay)}`)
    const drops = await relayDrops(metricsPort)
    log(`relay drops: ${drops.length ? drops.join(', ') : 'none'}`)
    if (guard.refused.length) log(`loopback guard refused ${guard.refused.length} off-box attempts: ${[...new Set(guard.refused)].join(', ')}`)
    if (relayExit) fails.push(`relay ${relayExit} during the run`)

    const consumers = live.length + replay.length
    if (fails.length === 0) {
      console.log(`INTEROP PASS: ${truth.length} PDS events for ${scenarioDIDs.length} accounts matched by ${consumers} relay consumers (live + cursor 0), sync API equal (${api.checked} answers); scenario ${scenarioSecs.toFixed(1)} s, total ${elapsed()}`)
      return 0
    }
    for (const f of fails) console.log(`  FAIL ${f}`)
    console.log(`INTEROP FAIL: ${fails.length} differences between the PDS and the relay's consumers (details above; relay log ${relayLog})`)
    process.env.INTEROP_KEEP = '1'
    return 1
  } finally {
    for (const c of cleanups.reverse()) {
      try {
        await c()
      } catch (err) {
        log(`cleanup: ${err.message}`)
      }
    }
    if (!process.env.INTEROP_KEEP) fs.rmSync(tmp, { recursive: true, force: true })
    else log(`kept ${tmp}`)
  }
}

async function getJSON(url) {
  const res = await fetch(url)
  const body = await res.json().catch(() => null)
  return { status: res.status, body }
}

// pick keeps the fields both sides must agree on.
const pickStatus = (b) => b && { did: b.did, active: b.active, status: b.status, rev: b.rev, error: b.error }
const pickCommit = (b) => b && { cid: b.cid, rev: b.rev, error: b.error }
const pickRepo = (b) => b && { did: b.did, head: b.head, rev: b.rev, active: b.active, status: b.status }

async function compareRepoStatus(pds, relay, dids, when) {
  const fails = []
  let lastRelay = null
  for (const did of dids) {
    const q = `/xrpc/com.atproto.sync.getRepoStatus?did=${encodeURIComponent(did)}`
    const a = await getJSON(pds + q), b = await getJSON(relay + q)
    lastRelay = b.body
    const pa = JSON.stringify({ http: a.status, ...pickStatus(a.body) }), pb = JSON.stringify({ http: b.status, ...pickStatus(b.body) })
    if (pa !== pb) fails.push(`getRepoStatus ${did} ${when}: relay ${pb}, PDS ${pa}`)
  }
  return { fails, relay: lastRelay }
}

async function compareSyncAPI(pds, relay, dids) {
  const fails = []
  let checked = 0
  const st = await compareRepoStatus(pds, relay, dids, 'at the end')
  fails.push(...st.fails)
  checked += dids.length
  for (const did of dids) {
    const q = `/xrpc/com.atproto.sync.getLatestCommit?did=${encodeURIComponent(did)}`
    const a = await getJSON(pds + q), b = await getJSON(relay + q)
    const pa = JSON.stringify({ http: a.status, ...pickCommit(a.body) }), pb = JSON.stringify({ http: b.status, ...pickCommit(b.body) })
    if (pa !== pb) fails.push(`getLatestCommit ${did}: relay ${pb}, PDS ${pa}`)
    checked++
  }
  const list = async (base) => {
    const out = new Map()
    let cursor = ''
    for (let i = 0; i < 100; i++) {
      const r = await getJSON(`${base}/xrpc/com.atproto.sync.listRepos?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`)
      if (r.status !== 200) throw new Error(`listRepos on ${base}: ${r.status} ${JSON.stringify(r.body)}`)
      for (const repo of r.body.repos) out.set(repo.did, repo)
      if (!r.body.cursor || r.body.repos.length === 0) break
      cursor = r.body.cursor
    }
    return out
  }
  const la = await list(pds), lb = await list(relay)
  for (const did of dids) {
    const pa = JSON.stringify(pickRepo(la.get(did)) ?? null), pb = JSON.stringify(pickRepo(lb.get(did)) ?? null)
    if (pa !== pb) fails.push(`listRepos entry ${did}: relay ${pb}, PDS ${pa}`)
    checked++
  }
  return { fails, checked }
}

async function relayDrops(metricsPort) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
    return text.split('\n').filter((l) => l.startsWith('relay_events_dropped_total') && !/ 0$/.test(l)).map((l) => l.replace('relay_events_dropped_total', ''))
  } catch (err) {
    return [`(metrics unreadable: ${err.message})`]
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.log(`INTEROP FAIL: ${err.stack || err}`)
    process.exit(1)
  },
)
