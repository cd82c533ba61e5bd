// HTTP + WebSocket echo server with no dependencies (RFC 6455 text frames, enough for an example).
'use strict';
const http = require('node:http');
const crypto = require('node:crypto');

const port = Number(process.env.PORT || 8080);
let requests = 0;

const server = http.createServer((req, res) => {
  requests += 1;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ message: 'hello from Node.js in a Cocoon MicroVM', requests }) + '\n');
});

server.on('upgrade', (req, socket) => {
  const key = req.headers['sec-websocket-key'];
  if (req.headers.upgrade?.toLowerCase() !== 'websocket' || !key) return socket.destroy();
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  let buffered = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      if (buffered.length < 2) return;
      const opcode = buffered[0] & 0x0f;
      let length = buffered[1] & 0x7f;
      let offset = 2;
      if (length === 126) { if (buffered.length < 4) return; length = buffered.readUInt16BE(2); offset = 4; }
      else if (length === 127) return socket.destroy(); // no giant frames in an example
      const masked = (buffered[1] & 0x80) !== 0;
      const maskOffset = offset;
      if (masked) offset += 4;
      if (buffered.length < offset + length) return;
      const payload = Buffer.from(buffered.subarray(offset, offset + length));
      if (masked) for (let i = 0; i < payload.length; i++) payload[i] ^= buffered[maskOffset + (i % 4)];
      buffered = buffered.subarray(offset + length);
      if (opcode === 0x8) return socket.end(Buffer.from([0x88, 0]));
      if (opcode === 0x1) {
        const reply = Buffer.from(`echo: ${payload.toString('utf8')}`);
        const header = reply.length < 126 ? Buffer.from([0x81, reply.length]) : Buffer.from([0x81, 126, reply.length >> 8, reply.length & 0xff]);
        socket.write(Buffer.concat([header, reply]));
      }
    }
  });
  socket.on('error', () => socket.destroy());
});

server.listen(port, '0.0.0.0', () => console.log(`listening on :${port}`));
