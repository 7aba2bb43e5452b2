// A minimal Lightd remote written from docs/protocol.md, as Lightd's own docs
// sketch one: Express, bearer token, an in-memory store of each server's
// latest state. The benchmark runs the reference receiver's load against it.
//
//   LIGHTD_TOKEN=... node server.js [port]   (port 0: any; prints "listening on URL")
"use strict";

const express = require("express");

const token = process.env.LIGHTD_TOKEN || "";
if (!token) {
  console.error("set LIGHTD_TOKEN");
  process.exit(2);
}
const STATUSES = new Set(["installing", "ready", "failed"]);
const latest = new Map(); // server id -> { status, data, updated_at }

const app = express();
app.disable("x-powered-by");
app.disable("etag");

app.use((req, res, next) => {
  if (req.get("authorization") !== `Bearer ${token}`) {
    return res.status(401).json({ success: false, error: "unauthorized" });
  }
  next();
});

app.get("/health", (req, res) => res.json({ status: 200, endpoint: "active" }));

app.post("/update", express.json({ limit: "64kb" }), (req, res) => {
  const body = req.body || {};
  if (body.event !== "update" || typeof body.server !== "string" || !body.server) {
    return res.status(400).json({ success: false, error: "event and server required" });
  }
  if (body.error === "failed" && typeof body.data === "string") {
    latest.set(body.server, { status: "failed", data: body.data, updated_at: Date.now() });
  } else if (STATUSES.has(body.status)) {
    latest.set(body.server, { status: body.status, data: null, updated_at: Date.now() });
  } else {
    return res.status(400).json({ success: false, error: "status or error required" });
  }
  res.json({ success: true });
});

app.get("/servers", (req, res) => res.json({ servers: Object.fromEntries(latest) }));

const server = app.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
server.keepAliveTimeout = 10000;
process.on("SIGTERM", () => server.close(() => process.exit(0)));
