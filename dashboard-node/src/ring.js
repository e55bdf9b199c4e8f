'use strict';

/**
 * A first-in first-out queue that contains at most `capacity` items. It starts
 * small and doubles up to its capacity, so an idle client costs little.
 */
class BoundedQueue {
  constructor(capacity) {
    if (!(Number.isInteger(capacity) && capacity > 0)) {
      throw new RangeError(`capacity ${capacity} is invalid; give a whole number greater than 0`);
    }
    this.capacity = capacity;
    this.items = new Array(Math.min(capacity, 8));
    this.head = 0;
    this.length = 0;
  }

  /** Append `item`; return false, leaving the queue unchanged, when it is full. */
  push(item) {
    if (this.length === this.capacity) return false;
    if (this.length === this.items.length) this.grow();
    this.items[(this.head + this.length) % this.items.length] = item;
    this.length += 1;
    return true;
  }

  peek() {
    return this.length === 0 ? undefined : this.items[this.head];
  }

  shift() {
    if (this.length === 0) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.length -= 1;
    return item;
  }

  clear() {
    this.items = new Array(Math.min(this.capacity, 8));
    this.head = 0;
    this.length = 0;
  }

  grow() {
    const size = Math.min(this.capacity, this.items.length * 2);
    const items = new Array(size);
    for (let i = 0; i < this.length; i += 1) items[i] = this.items[(this.head + i) % this.items.length];
    this.items = items;
    this.head = 0;
  }
}

module.exports = { BoundedQueue };
