// Hammer IoT example app (Node.js): answers every GET with its version and how long it has
// been up, formatted by its one dependency (`ms`), which the device installs with the setup's
// install step (`npm ci --omit=dev`) before the release starts.
"use strict";

const http = require("node:http");
const ms = require("ms");
const pkg = require("./package.json");

const started = Date.now();
const port = Number(process.env.PORT || 8000);
const host = process.env.HOST || "127.0.0.1";

const server = http.createServer((req, res) => {
  const body = `hello from hammer node-app ${pkg.version} (${process.env.HAMMER_COMMIT || "local"}), up ${ms(Date.now() - started)}\n`;
  res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(body);
  console.log(`${req.socket.remoteAddress} ${req.method} ${req.url}`);
});

server.listen(port, host, () => {
  console.log(`node-app ${pkg.version} listening on ${host}:${port}`);
});

// hammer-manager stops the app with SIGTERM, then SIGKILL after its grace period.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
