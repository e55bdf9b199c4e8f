'use strict';
// The client side of the dashboard's WebSocket flow control, shared by the
// page, the tests and the benchmark: acknowledge received updates with
// {"ack": <sequence>} at once every quarter window, else after `delayMs`.

function createAcker(send, { window, delayMs = 20 }) {
  const every = Math.max(1, Math.floor(window / 4));
  let last = 0;
  let pending = 0;
  let timer = null;

  function flush() {
    clearTimeout(timer);
    timer = null;
    if (pending === 0) return;
    pending = 0;
    send(JSON.stringify({ ack: last }));
  }

  return {
    received(sequence) {
      last = sequence;
      pending += 1;
      if (pending >= every) flush();
      else if (timer === null) timer = setTimeout(flush, delayMs);
    },
    flush,
    stop() {
      clearTimeout(timer);
      timer = null;
    },
  };
}

module.exports = { createAcker };
