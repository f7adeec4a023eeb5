// The Node.js client of bench_pipeline: what a plain Node consumer of the
// Notifications API does, with `ws` and `JSON.parse`.
//
//   node client.mjs BASE_URL TOPIC COUNT
//
// Credentials come from GENESYSCLOUD_OAUTHCLIENT_ID / _SECRET. It sets up a
// token, a channel and one topic, opens the socket, and once the pong to its
// ping is in prints {"ready": true}; the benchmark then starts the blast.
// After COUNT notifications on TOPIC it prints one JSON line: the CPU it
// spent (process.cpuUsage: user + system, every thread) from ready to the
// last frame, the first and last receive times, and an order check on every
// 64th frame's CorrelationId (frame n ends in n, twelve digits).
import WebSocket from "ws";

const [baseUrl, topic, countArg] = process.argv.slice(2);
const count = Number(countArg);
const id = process.env.GENESYSCLOUD_OAUTHCLIENT_ID ?? "";
const secret = process.env.GENESYSCLOUD_OAUTHCLIENT_SECRET ?? "";

async function call(method, url, headers, body) {
  const response = await fetch(url, { method, headers, body });
  if (!response.ok) {
    throw new Error(`${method} ${url}: HTTP ${response.status} ${await response.text()}`);
  }
  return response.json();
}

const basic = Buffer.from(`${id}:${secret}`).toString("base64");
const token = await call(
  "POST",
  `${baseUrl}/oauth/token`,
  { Authorization: `Basic ${basic}`, "Content-Type": "application/x-www-form-urlencoded" },
  "grant_type=client_credentials",
);
const auth = { Authorization: `Bearer ${token.access_token}` };
const channels = `${baseUrl}/api/v2/notifications/channels`;
const channel = await call("POST", channels, auth);
await call(
  "PUT",
  `${channels}/${channel.id}/subscriptions?ignoreErrors=true`,
  { ...auth, "Content-Type": "application/json" },
  JSON.stringify([{ id: topic }]),
);

const now = () => (performance.timeOrigin + performance.now()) / 1000;
const ws = new WebSocket(channel.connectUri);
let ready = false;
let received = 0;
let outOfOrder = 0;
let first = 0;
let last = 0;
let frameBytes = 0;
let cpuStart;
let rssStart;

ws.on("open", () => ws.send('{"message":"ping"}'));
ws.on("message", (data) => {
  const doc = JSON.parse(data.toString());
  if (!ready) {
    if (doc.eventBody?.message === "pong") {
      ready = true;
      cpuStart = process.cpuUsage();
      rssStart = process.resourceUsage().maxRSS;
      process.stdout.write('{"ready": true}\n');
    }
    return;
  }
  if (doc.topicName !== topic) return; // a heartbeat
  last = now();
  if (received === 0) first = last;
  if ((received & 63) === 0 && Number(doc.metadata.CorrelationId.slice(-12)) !== received) {
    outOfOrder += 1;
  }
  received += 1;
  if (received === count) {
    const cpu = process.cpuUsage(cpuStart);
    frameBytes = data.length;
    const result = {
      received,
      out_of_order: outOfOrder,
      first,
      last,
      frame_bytes: frameBytes,
      cpu_us: cpu.user + cpu.system,
      max_rss_delta_kib: process.resourceUsage().maxRSS - rssStart,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
    ws.terminate();
  }
});
ws.on("error", (error) => {
  console.error(String(error));
  process.exit(1);
});
ws.on("close", (code) => {
  if (received < count) {
    console.error(`socket closed (${code}) after ${received} of ${count}`);
    process.exit(1);
  }
});
