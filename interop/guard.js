'use strict'
// Loaded first (node -r ./guard.js): keeps every socket of this process on
// loopback. Servers are bound to 127.0.0.1 whatever they ask for (dev-env's
// servers listen on all interfaces), and outbound connections or DNS
// lookups for anything but loopback are refused and recorded.
const net = require('node:net')
const dns = require('node:dns')

const LOOPBACK_HOSTS = new Set(['127.0.0.1', '::1', 'localhost', '::ffff:127.0.0.1'])
const servers = []
const refused = []

const isPort = (v) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v))

const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  const a0 = args[0]
  if (isPort(a0)) {
    if (typeof args[1] === 'string') args[1] = '127.0.0.1'
    else args.splice(1, 0, '127.0.0.1')
  } else if (a0 === undefined || typeof a0 === 'function') {
    args.unshift(0, '127.0.0.1')
  } else if (a0 && typeof a0 === 'object' && a0.path === undefined && a0.fd === undefined && a0._handle === undefined && a0.handle === undefined) {
    args[0] = { ...a0, host: '127.0.0.1' }
  }
  servers.push(this)
  return origListen.apply(this, args)
}

const origConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  let opts = args[0]
  if (Array.isArray(opts)) opts = opts[0] // net's internal normalized form
  let host
  if (opts && typeof opts === 'object') {
    if (opts.path !== undefined) return origConnect.apply(this, args)
    host = opts.host ?? 'localhost'
  } else if (isPort(opts)) {
    host = typeof args[1] === 'string' ? args[1] : 'localhost'
  } else {
    return origConnect.apply(this, args) // unix socket path
  }
  if (!LOOPBACK_HOSTS.has(String(host).toLowerCase())) {
    refused.push(`connect ${host}`)
    process.nextTick(() => this.destroy(new Error(`interop guard: refused connection to non-loopback host ${host}`)))
    return this
  }
  return origConnect.apply(this, args)
}

const refuseName = (kind, name) => {
  refused.push(`${kind} ${name}`)
  const err = new Error(`interop guard: refused ${kind} of ${name}`)
  err.code = 'ENOTFOUND'
  return err
}
const origLookup = dns.lookup
dns.lookup = function (hostname, options, cb) {
  if (typeof options === 'function') { cb = options; options = {} }
  if (!LOOPBACK_HOSTS.has(String(hostname).toLowerCase())) {
    const err = refuseName('lookup', hostname)
    process.nextTick(() => cb(err))
    return {}
  }
  return origLookup.call(this, hostname, options, cb)
}
const origPromLookup = dns.promises.lookup
dns.promises.lookup = async function (hostname, options) {
  if (!LOOPBACK_HOSTS.has(String(hostname).toLowerCase())) throw refuseName('lookup', hostname)
  return origPromLookup.call(this, hostname, options)
}
for (const target of [dns, dns.Resolver.prototype]) {
  for (const m of ['resolve', 'resolve4', 'resolve6', 'resolveTxt', 'resolveAny', 'resolveCname']) {
    target[m] = function (name, ...rest) {
      const cb = rest.pop()
      const err = refuseName(m, name)
      process.nextTick(() => typeof cb === 'function' && cb(err))
    }
  }
}
for (const target of [dns.promises, dns.promises.Resolver.prototype]) {
  for (const m of ['resolve', 'resolve4', 'resolve6', 'resolveTxt', 'resolveAny', 'resolveCname']) {
    target[m] = async function (name) { throw refuseName(m, name) }
  }
}

// listening reports every server this process bound, with its address.
function listening() {
  return servers.filter((s) => s.listening).map((s) => s.address())
}

module.exports = { listening, refused }
