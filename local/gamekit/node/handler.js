// payrelay's notifications, received by a Node game server, with the standardwebhooks package.
// Run it:  GAME_SECRETS=whsec_... LEDGER=/var/lib/game/ledger.jsonl PORT=8080 node handler.js
// (PAYRELAY_ENVIRONMENT=sandbox on a staging server, with the game's sandbox secrets.)
//
// 1. Verify the Standard Webhooks signature: standardwebhooks checks every "v1," signature in
//    webhook-signature in constant time and the timestamp within 5 minutes; we try each of our
//    secrets (two while rotating). A bad signature gets 401 and changes nothing. Then check
//    data.environment is the one this server serves (PAYRELAY_ENVIRONMENT, production by
//    default): the other gets 400 and changes nothing, so a test payment never grants here.
// 2. Deduplicate by webhook-id: the ledger is our table, with webhook-id its unique key.
// 3. Grant on payment.succeeded, revoke on payment.refunded, each once.
// 4. Answer 2xx only after the write (synced to disk), and quickly (payrelay waits 10 s).
//
// The ledger is a JSON-lines file so the example needs nothing but standardwebhooks; in a real
// game it is a database table with a unique key on webhook_id, written in the same transaction
// as the grant or the revoke. Node runs one request at a time here, so check-then-append is safe.
"use strict";
const http = require("node:http");
const fs = require("node:fs");
const { Webhook } = require("standardwebhooks");

const secrets = (process.env.GAME_SECRETS || "").split(",").map((s) => s.trim()).filter(Boolean);
const verifiers = secrets.map((s) => new Webhook(s));
const ledgerPath = process.env.LEDGER || "ledger.jsonl";
const environment = process.env.PAYRELAY_ENVIRONMENT || "production";
if (environment !== "production" && environment !== "sandbox") {
  console.error("PAYRELAY_ENVIRONMENT must be production or sandbox");
  process.exit(2);
}
const seen = new Set();
if (fs.existsSync(ledgerPath)) {
  for (const line of fs.readFileSync(ledgerPath, "utf8").split("\n")) {
    if (line) seen.add(JSON.parse(line).webhook_id);
  }
}

function verify(body, headers) {
  for (const v of verifiers) {
    try {
      return v.verify(body, {
        "webhook-id": headers["webhook-id"] || "",
        "webhook-timestamp": headers["webhook-timestamp"] || "",
        "webhook-signature": headers["webhook-signature"] || "",
      });
    } catch (e) {
      // not this secret: try the next
    }
  }
  return null;
}

function answer(res, code, reason) {
  res.writeHead(code, { "Content-Type": "application/json" });
  res.end(code === 204 ? undefined : JSON.stringify({ ok: code < 300, reason }));
}

http
  .createServer((req, res) => {
    if (req.method !== "POST") return answer(res, 405, "use POST");
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size <= 1 << 20) chunks.push(c);
    });
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const msg = verify(body, req.headers);
      if (!msg) return answer(res, 401, "bad signature");
      const env = msg.data && msg.data.environment;
      if (env !== environment) return answer(res, 400, `environment ${JSON.stringify(env)} is not this server's (${environment})`);
      const id = req.headers["webhook-id"];
      if (seen.has(id)) return answer(res, 200, "already processed");
      let row;
      if (msg.type === "payment.succeeded") {
        row = { webhook_id: id, kind: "grant", order_id: msg.data.order_id, amount_minor: msg.data.amount_minor };
      } else if (msg.type === "payment.refunded") {
        row = { webhook_id: id, kind: "revoke", order_id: msg.data.order_id, refund_id: msg.data.refund.refund_id, amount_minor: msg.data.refund.amount_minor };
      } else {
        return answer(res, 200, "type not handled");
      }
      try {
        const fd = fs.openSync(ledgerPath, "a");
        fs.writeSync(fd, JSON.stringify(row) + "\n");
        fs.fsyncSync(fd);
        fs.closeSync(fd);
      } catch (e) {
        return answer(res, 503, "ledger unavailable"); // payrelay retries on its ladder
      }
      seen.add(id);
      answer(res, 204);
    });
  })
  .listen(Number(process.env.PORT || 8080), process.env.HOST || "127.0.0.1");
