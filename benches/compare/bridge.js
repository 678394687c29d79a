// The hand-written bridge users run today, as small as it gets: subscribe to telemetry, keep a
// message when current > rated_current * 1.2, add `overload`, publish to out/{device}.
// Usage: node bridge.js PORT QOS devices.json   (devices.json: {"dev-0": 10.0, ...})
const fs = require('fs');
const mqtt = require('mqtt');

const [port, qosArg, devicesFile] = process.argv.slice(2);
const qos = Number(qosArg);
const rated = JSON.parse(fs.readFileSync(devicesFile, 'utf8'));

const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  clientId: 'bridge-compare',
  clean: true,
  keepalive: 60,
});

client.on('connect', () => {
  client.subscribe('site/+/device/+/telemetry', { qos });
});

client.on('message', (topic, payload) => {
  const device = topic.split('/')[3];
  const r = rated[device];
  let msg;
  try {
    msg = JSON.parse(payload);
  } catch (e) {
    return;
  }
  if (r === undefined || !(msg.current > r * 1.2)) return;
  msg.overload = (msg.current / r - 1) * 100;
  client.publish(`out/${device}`, JSON.stringify(msg), { qos });
});

client.on('error', (e) => console.error(`bridge: ${e.message}`));
