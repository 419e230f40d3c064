// Kinesalite on loopback only (its own CLI listens on every interface), in memory, with
// instant stream creation and resharding.
const kinesalite = require('kinesalite');
const port = Number(process.env.PORT || 45670);
const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 500 });
server.listen(port, '127.0.0.1', () => console.log(`kinesalite on 127.0.0.1:${port}`));
