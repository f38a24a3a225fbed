#!/usr/bin/env node
/*
 * Interop receiver for the fluentclient test-suite.
 *
 * It runs FluentServer from @fluent-org/logger (pinned to 1.0.10 in package.json), a
 * forward-protocol server that we did not write, and reports on stdout, one JSON object per
 * line, what that server decoded.
 *
 * Usage:
 *   node peer.js [--port N] [--shared-key KEY] [--server-hostname NAME]
 *                [--user NAME:PASSWORD ...] [--tls-cert PEM --tls-key PEM [--tls-ca PEM]
 *                [--tls-request-cert]] [--log-connections] [--config JSON|PATH]
 *
 * --config takes a JSON object (inline when it starts with "{", otherwise a file path) with the
 * same settings: {"port", "sharedKey", "serverHostname", "users": {name: password},
 * "tls": {"cert", "key", "ca", "requestCert", "rejectUnauthorized", "minVersion", "maxVersion"},
 * "logConnections"}. Flags given on the command line override the config. A shared key turns on
 * the HELO/PING/PONG handshake; users additionally turn on user authentication. TLS settings
 * make the port TLS-only (the cert/key/ca values are file paths).
 *
 * The server listens on 127.0.0.1 only. Port 0 (the default) picks a free port.
 *
 * Output lines (stdout):
 *   {"listening": <port>}                           once, when the server accepts connections
 *   {"tag": <str>, "time": <value>, "record": <value>}   for every event, in arrival order
 *   {"connection": "open"|"close", "remote": "ip:port"}  only with --log-connections
 *
 * Values are written as JSON with these lossless conventions (a tagged value is an object with
 * exactly one key that starts with "$"):
 *   null, booleans, strings, arrays        as themselves
 *   numbers that are safe integers         as JSON integers
 *   other finite non-integral numbers      as JSON numbers (JS prints the shortest form that
 *                                          reads back to the same double)
 *   integral numbers beyond +-(2^53 - 1)   {"$int": "<exact decimal value of the double>"}
 *   -0, NaN, +Infinity, -Infinity          {"$float": "-0.0" | "nan" | "inf" | "-inf"}
 *   Uint8Array / Buffer (msgpack bin)      {"$bin": "<base64>"}
 *   EventTime (msgpack ext 0)              {"$eventtime": [seconds, nanoseconds]}
 *   BigInt (not produced by this version)  {"$int": "<decimal>"}
 *   other ext types                        {"$ext": [type, "<base64>"]}
 *   Date (msgpack timestamp ext -1)        {"$date_ms": <milliseconds since the epoch>}
 *   a map whose only key starts with "$"   {"$map": {...}} so that it is not read as a tag
 *   any other map                          a JSON object with every value converted
 * Note that JavaScript has a single number type: msgpack int 1 and float 1.0 both arrive as 1.
 *
 * The process exits when its stdin reaches EOF (so it never outlives the test process that
 * spawned it), and on SIGTERM / SIGINT. Diagnostics go to stderr.
 */
"use strict";

const fs = require("fs");
const path = require("path");
const {FluentServer, EventTime} = require("@fluent-org/logger");
// The msgpack library FluentServer decodes with (its own dependency, resolved from its location).
const {ExtData} = require(
  require.resolve("@msgpack/msgpack", {paths: [path.dirname(require.resolve("@fluent-org/logger"))]})
);

const HOST = "127.0.0.1";

function die(message) {
  process.stderr.write(`peer.js: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  let config = {};
  const flags = {};
  const users = {};
  let haveUsers = false;
  const needValue = (i, name) => {
    if (i + 1 >= argv.length) {
      die(`${name} needs a value`);
    }
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    switch (arg) {
      case "--config": {
        const raw = needValue(i, arg);
        i++;
        const text = raw.trimStart().startsWith("{")
          ? raw
          : fs.readFileSync(path.resolve(raw), "utf8");
        try {
          config = JSON.parse(text);
        } catch (e) {
          die(`--config is not valid JSON: ${e.message}`);
        }
        break;
      }
      case "--port":
        flags.port = Number(needValue(i, arg));
        i++;
        break;
      case "--shared-key":
        flags.sharedKey = needValue(i, arg);
        i++;
        break;
      case "--server-hostname":
        flags.serverHostname = needValue(i, arg);
        i++;
        break;
      case "--user": {
        const spec = needValue(i, arg);
        i++;
        const colon = spec.indexOf(":");
        if (colon <= 0) {
          die("--user wants NAME:PASSWORD");
        }
        users[spec.slice(0, colon)] = spec.slice(colon + 1);
        haveUsers = true;
        break;
      }
      case "--tls-cert":
      case "--tls-key":
      case "--tls-ca": {
        flags.tls = flags.tls || {};
        flags.tls[arg.slice("--tls-".length)] = needValue(i, arg);
        i++;
        break;
      }
      case "--tls-request-cert":
        flags.tls = flags.tls || {};
        flags.tls.requestCert = true;
        break;
      case "--log-connections":
        flags.logConnections = true;
        break;
      case "-h":
      case "--help":
        process.stdout.write(
          "usage: node peer.js [--port N] [--shared-key KEY] [--server-hostname NAME]\n" +
            "  [--user NAME:PASSWORD ...] [--tls-cert PEM --tls-key PEM [--tls-ca PEM]\n" +
            "  [--tls-request-cert]] [--log-connections] [--config JSON|PATH]\n"
        );
        process.exit(0);
        break;
      default:
        die(`unknown argument ${JSON.stringify(arg)}`);
    }
  }
  const merged = Object.assign({}, config, flags);
  merged.tls = Object.assign({}, config.tls || {}, flags.tls || {});
  if (Object.keys(merged.tls).length === 0) {
    delete merged.tls;
  }
  if (haveUsers) {
    merged.users = Object.assign({}, config.users || {}, users);
  }
  return merged;
}

function serverOptions(settings) {
  const port = settings.port === undefined ? 0 : settings.port;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    die(`bad port ${JSON.stringify(settings.port)}`);
  }
  // The host is fixed: this peer is for local tests and must not be reachable from outside.
  const options = {listenOptions: {host: HOST, port}};

  const users = settings.users || {};
  const wantsAuth = Object.keys(users).length > 0;
  if (settings.sharedKey !== undefined || wantsAuth) {
    if (typeof settings.sharedKey !== "string") {
      die("user authentication needs a shared key as well (FluentServer has no separate switch)");
    }
    options.security = {
      serverHostname: settings.serverHostname || "fluentclient-node-peer",
      sharedKey: settings.sharedKey,
      authorize: wantsAuth,
      userDict: users,
    };
  }

  if (settings.tls) {
    const t = settings.tls;
    if (!t.cert || !t.key) {
      die("TLS needs both a certificate and a key");
    }
    const tlsOptions = {
      cert: fs.readFileSync(t.cert),
      key: fs.readFileSync(t.key),
    };
    if (t.ca) {
      tlsOptions.ca = fs.readFileSync(t.ca);
    }
    if (t.passphrase !== undefined) {
      tlsOptions.passphrase = t.passphrase;
    }
    for (const name of ["requestCert", "rejectUnauthorized", "minVersion", "maxVersion"]) {
      if (t[name] !== undefined) {
        tlsOptions[name] = t[name];
      }
    }
    options.tlsOptions = tlsOptions;
  }
  return options;
}

// ---------------------------------------------------------------------------------------------
// Lossless JSON conversion of what FluentServer hands to its "entry" listeners.

function encodeNumber(n) {
  if (Number.isNaN(n)) {
    return {$float: "nan"};
  }
  if (n === Infinity) {
    return {$float: "inf"};
  }
  if (n === -Infinity) {
    return {$float: "-inf"};
  }
  if (Object.is(n, -0)) {
    return {$float: "-0.0"};
  }
  if (Number.isInteger(n) && !Number.isSafeInteger(n)) {
    // JSON.stringify would print e.g. 18446744073709552000, which is not the double's value.
    return {$int: BigInt(n).toString()};
  }
  return n;
}

function toBase64(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

function encodeValue(v) {
  if (v === null || v === undefined) {
    return null;
  }
  switch (typeof v) {
    case "string":
    case "boolean":
      return v;
    case "number":
      return encodeNumber(v);
    case "bigint":
      return {$int: v.toString()};
    case "object":
      break;
    default:
      return {$unknown: String(v)};
  }
  if (v instanceof EventTime) {
    return {$eventtime: [v.epoch, v.nano]};
  }
  if (v instanceof Uint8Array) {
    return {$bin: toBase64(v)};
  }
  if (v instanceof Date) {
    return {$date_ms: v.getTime()};
  }
  if (Array.isArray(v)) {
    return v.map(encodeValue);
  }
  // msgpack's ExtData: an unregistered extension type.
  if (v instanceof ExtData) {
    return {$ext: [v.type, toBase64(v.data)]};
  }
  const out = {};
  const keys = Object.keys(v);
  for (const k of keys) {
    out[k] = encodeValue(v[k]);
  }
  if (keys.length === 1 && keys[0].startsWith("$")) {
    return {$map: out};
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output: lines are collected while FluentServer emits the entries of one frame and written in
// one go afterwards. Writes to a pipe are synchronous in Node on Linux, so nothing is lost at exit.

let pending = [];
let flushScheduled = false;

function flush() {
  flushScheduled = false;
  if (pending.length === 0) {
    return;
  }
  const text = pending.join("");
  pending = [];
  process.stdout.write(text);
}

function emitLine(obj) {
  pending.push(JSON.stringify(obj) + "\n");
  if (!flushScheduled) {
    flushScheduled = true;
    process.nextTick(flush);
  }
}

process.stdout.on("error", err => {
  // The reader went away; there is nobody left to report to.
  process.stderr.write(`peer.js: stdout: ${err.message}\n`);
  process.exit(0);
});

// ---------------------------------------------------------------------------------------------

async function main() {
  const settings = parseArgs(process.argv.slice(2));
  const server = new FluentServer(serverOptions(settings));

  server.on("entry", (tag, time, record) => {
    emitLine({tag, time: encodeValue(time), record: encodeValue(record)});
  });

  // FluentServer keeps its net/tls server in a private field. Reaching into it lets us keep a
  // client's reset from surfacing as an unhandled 'error' event, and report connections.
  const inner = server.server;
  const watch = socket => {
    socket.on("error", err => {
      if (settings.logConnections) {
        process.stderr.write(`peer.js: socket error: ${err.message}\n`);
      }
    });
  };
  if (inner && typeof inner.on === "function") {
    inner.on("connection", socket => {
      watch(socket);
      if (settings.logConnections) {
        const remote = `${socket.remoteAddress}:${socket.remotePort}`;
        emitLine({connection: "open", remote});
        socket.on("close", () => emitLine({connection: "close", remote}));
      }
    });
    inner.on("secureConnection", watch);
    inner.on("tlsClientError", err => {
      if (settings.logConnections) {
        process.stderr.write(`peer.js: TLS client error: ${err.message}\n`);
      }
    });
  }

  let stopping = false;
  const stop = reason => {
    if (stopping) {
      return;
    }
    stopping = true;
    flush();
    if (settings.logConnections) {
      process.stderr.write(`peer.js: stopping (${reason})\n`);
    }
    // FluentServer.close() waits until every client has closed its side; do not wait for that.
    server.close().catch(() => {});
    process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.stdin.on("end", () => stop("stdin closed"));
  process.stdin.on("close", () => stop("stdin closed"));
  process.stdin.on("error", () => stop("stdin error"));
  process.stdin.resume();

  await server.listen();
  if (stopping) {
    return;
  }
  emitLine({listening: server.port});
  flush();
}

main().catch(err => die(err && err.stack ? err.stack : String(err)));
