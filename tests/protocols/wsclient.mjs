// An independent WebSocket client for the protocol tests: Node's own WebSocket
// (undici's; run with --experimental-websocket on Node 20, built in from 22).
//
// Usage: node wsclient.mjs URL COUNT
// Opens COUNT connections to URL (nickname "nN" as the query), prints "open"
// once all are open, then each sends a message, waits for its echo, pauses
// 20 ms, until stdin closes; then each closes, and the results are printed as
// one JSON line: [{sent, echoed, code, serverClosed}, ...].

const [url, count] = process.argv.slice(2);
let stopping = false;
let opened = 0;
let closed = 0;
const results = [];

function client(n) {
  const result = { sent: [], echoed: [], code: null, serverClosed: true };
  results.push(result);
  const ws = new WebSocket(`${url}?nick=n${n}`);
  const send = () => {
    if (stopping) {
      result.serverClosed = false;
      ws.close(1000);
      return;
    }
    const message = `c${n} ${result.sent.length}`;
    result.sent.push(message);
    ws.send(message);
  };
  ws.onopen = () => {
    opened += 1;
    if (opened === Number(count)) console.log("open");
    send();
  };
  ws.onmessage = (event) => {
    result.echoed.push(String(event.data));
    setTimeout(send, 20);
  };
  ws.onclose = (event) => {
    result.code = result.serverClosed ? event.code : null;
    closed += 1;
    if (closed === Number(count)) {
      console.log(JSON.stringify(results));
      process.exit(0);
    }
  };
}

process.stdin.on("end", () => {
  stopping = true;
});
process.stdin.resume();
for (let n = 0; n < Number(count); n++) client(n);
