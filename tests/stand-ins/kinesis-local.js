// kinesis-local (kinesis-mock, the stand-in that serves enhanced fan-out's SubscribeToShard) on
// loopback only: it binds 0.0.0.0 itself, so every listen() here is moved to 127.0.0.1. Plain HTTP
// on KINESIS_MOCK_PLAIN_PORT, TLS (its self-signed certificate) on KINESIS_MOCK_TLS_PORT.
const net = require('net');
const path = require('path');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length && typeof args[0] === 'object' && args[0] !== null) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  } else if (typeof args[1] === 'string') {
    args[1] = '127.0.0.1';
  } else {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
const main = require.resolve('kinesis-local/main.js');
process.env.KINESIS_MOCK_CERT_PATH ||= path.join(path.dirname(main), 'server.json');
require(main);
