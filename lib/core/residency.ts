// Sessions are never scarce: a context has a few sequences resident in its KV cache, and any number of
// sessions. A session gets a sequence when it needs one (to generate, search, fork); when none is free, an
// idle session gives up its own (the least recently used, or one next to a generating session's; #take):
// its KV state is saved to host memory (llama.cpp's per-sequence state API, through the engine thread, in
// order with everything queued there) and restored
// when that session is used again. Saved states stay within a byte budget (`cacheRamBytes`); past it the
// oldest are dropped, and those sessions decode their tokens again on next use. Work that cannot get a
// sequence now (every resident session is busy) waits: higher priority first, then in order of arrival.
// llama-server's slots and host-memory prompt cache are the model.
import { LlamaError } from '../base/errors.js';
import type { NativeContext } from '../native/native.js';

/** A session's KV state in host memory. */
export interface SavedState {
  data: Uint8Array;
  streams: number;
}

/** What the pool needs from a session (not exported from the package). */
export interface Tenant {
  /** No generation, search, save or load runs or waits for this session. */
  readonly idle: boolean;
  /** The saved state was dropped (budget, or its save failed): the session's cache is empty now. */
  forgetCache(): void;
  /** KV cells its cache holds (as of its last generation). */
  readonly cells: number;
  /** Disposed: it gets no sequence (one granted after its dispose() would never be given back). */
  readonly disposed: boolean;
}

interface Parked {
  /** The state, once the engine has saved it. */
  state: SavedState | null;
  pending: Promise<void> | null;
  bytes: number;
}

interface Waiter {
  tenant: Tenant;
  cells: number;
  priority: number;
  order: number;
  grant(seq: number): void;
  fail(e: LlamaError): void;
}

/** @internal The resident sequences of one context and the sessions that share them. */
export class Residency {
  readonly #handle: () => NativeContext | null;
  /** Budget for saved states, bytes. */
  readonly budget: number;
  #free: number[];
  #owner = new Map<number, Tenant>();
  #seq = new Map<Tenant, number>();
  #used = new Map<Tenant, number>();
  #tick = 0;
  #parked = new Map<Tenant, Parked>();
  #parkedBytes = 0;
  /** Bytes a KV cell takes in a saved state: the most seen so far, or the model's estimate (0: unknown). */
  #bytesPerCell = 0;
  #waiters: Waiter[] = [];
  #changes: Array<() => void> = [];
  #order = 0;
  #closed = false;

  /** With one KV cache for all sequences (kvUnified): its cells; null when each sequence has its own. */
  readonly #sharedCells: number | null;

  /**
   * `bytesPerCell`: what a KV cell of the model takes (F16 keys and values; lib/core/memory.ts), until saves
   * show what it takes in a saved state.
   */
  constructor(sequences: number, budget: number, handle: () => NativeContext | null, sharedCells: number | null = null, bytesPerCell = 0) {
    this.#bytesPerCell = bytesPerCell;
    this.#free = Array.from({ length: sequences }, (_, i) => i);
    this.budget = budget;
    this.#handle = handle;
    this.#sharedCells = sharedCells;
  }

  /**
   * With one KV cache for all sequences: makes room for `t` to add `cells` cells, by moving the least
   * recently used idle sessions' caches to host memory (as when their sequences are taken) until the
   * resident caches and the new cells fit. Each sequence having cells of its own, nothing to do.
   */
  makeRoom(t: Tenant, cells: number): void {
    const total = this.#sharedCells;
    const h = this.#handle();
    if (total === null || !h || this.#closed) return;
    let used = 0;
    for (const s of this.#seq.keys()) used += s.cells;
    while (used + cells > total) {
      const victim = this.#leastRecentlyUsed(this.#seq.keys(), (s) => s !== t && (s.idle || this.#waiting(s)) && s.cells > 0);
      if (!victim) return;
      used -= victim.cells;
      this.#free.push(this.#evict(victim, h));
      this.#free.sort((a, b) => a - b);
    }
  }

  /** Resident sequences not held by a session. */
  get free(): number {
    return this.#free.length;
  }

  /** Bytes of saved states held now. */
  get savedBytes(): number {
    return this.#parkedBytes;
  }

  /** The sequence the session holds now, if any. */
  sequenceOf(t: Tenant): number | undefined {
    return this.#seq.get(t);
  }

  /** True when the session's KV state waits in host memory (or is being saved there). */
  isSaved(t: Tenant): boolean {
    return this.#parked.has(t);
  }

  touch(t: Tenant): void {
    this.#used.set(t, ++this.#tick);
  }

  /**
   * The session's sequence, made resident now if it can be: a free one, or the one of the least recently
   * used idle session (whose state is saved first). Its own saved state is restored into it. Undefined when
   * it has to wait: every resident session is busy, or its own state is still being saved.
   */
  acquire(t: Tenant, spare?: Tenant, cells = 0): number | undefined {
    if (t.disposed) return undefined;
    const held = this.#seq.get(t);
    const need = this.#cellsNeeded(t, cells);
    if (held !== undefined) {
      if (!this.#roomFor(t, need!)) return undefined;
      this.touch(t);
      return held;
    }
    const h = this.#handle();
    if (!h || this.#closed) return undefined;
    const parked = this.#parked.get(t);
    if (need === null || !this.#roomFor(t, need)) return undefined;
    const seq = this.#take(t, h, spare);
    if (seq === undefined) return undefined;
    this.#seq.set(t, seq);
    this.#owner.set(seq, t);
    this.touch(t);
    if (parked?.state) {
      // One KV cache for all sequences: idle sessions' cells make way for the restored ones first.
      this.makeRoom(t, 0);
      this.#unpark(t);
      // Queued on the engine thread before anything the session queues next.
      const failed = () => {
        // Our own state, into a sequence of the same context: only memory (or, with one cache for all
        // sequences, room) can fail it. The session starts over: its tokens are decoded again.
        if (this.#seq.get(t) === seq) this.#handle()?.clearSequence(seq);
        t.forgetCache();
      };
      try {
        h.loadSequence(seq, parked.state.data, parked.state.streams).catch(failed);
      } catch {
        // A check before the engine's queue refused it (thrown, not rejected): the same.
        failed();
      }
    }
    return seq;
  }

  /**
   * With one KV cache for all sequences: whether `t` may start work that will hold `cells` cells now. The
   * cells of sessions that are busy (generating) cannot be made free; idle ones can ({@link makeRoom}).
   * Work that would overfill the cache beside busy sessions waits for them (both would otherwise end with
   * contextFull); work alone, or with each sequence's own cells, always may.
   */
  #roomFor(t: Tenant, cells: number): boolean {
    const total = this.#sharedCells;
    if (total === null || cells <= 0) return true;
    // (Sessions waiting here run nothing: their cells can go to host memory too, as idle ones' do. Counted
    // as busy, a session's second turn waiting behind a prompt that waited for room kept it waiting.)
    let busy = 0;
    for (const s of this.#seq.keys()) if (s !== t && !s.idle && !this.#waiting(s)) busy += s.cells;
    return busy === 0 || busy + cells <= total;
  }

  /**
   * With one KV cache for all sequences: whether `w` waits for room (its cells do not fit beside the running
   * sessions' now), rather than for a sequence or for its own save.
   */
  #waitsForRoom(w: Waiter): boolean {
    if (this.#sharedCells === null || w.cells <= 0) return false;
    const need = this.#cellsNeeded(w.tenant, w.cells);
    return need !== null && !this.#roomFor(w.tenant, need);
  }

  /**
   * The cells `t` needs room for to start work of `cells` ({@link acquire}): those, or, where its saved
   * state comes back into a sequence, at least its own (a restore brings its cells back, and with one KV
   * cache for all sequences they need room too). Null while its state is still being saved (restored once
   * the save has finished).
   */
  #cellsNeeded(t: Tenant, cells: number): number | null {
    if (this.#seq.has(t)) return cells;
    const parked = this.#parked.get(t);
    if (parked && !parked.state) return null;
    return parked?.state ? Math.max(cells, t.cells) : cells;
  }

  /** The session waits here for a sequence or for room (nothing runs for it). */
  #waiting(t: Tenant): boolean {
    return this.#waiters.some((w) => w.tenant === t);
  }

  /**
   * {@link acquire} for work of `priority` that needs `cells` (kvUnified), unless work of the same or a
   * higher priority waits for room already: then it waits behind it. (Short requests coming all the time
   * passed a 600-token prompt that waited for room, and kept it waiting as long as they came; a hostile
   * review.)
   */
  acquireInTurn(t: Tenant, priority: number, cells: number): number | undefined {
    const queued = this.#sharedCells !== null && cells > 0 && this.#waiters.some((w) => w.priority >= priority && this.#waitsForRoom(w));
    return queued ? undefined : this.acquire(t, undefined, cells);
  }

  /** Waits for {@link acquire} to succeed (priority first, then arrival). */
  wait(t: Tenant, priority: number, signal?: AbortSignal, cells = 0): Promise<number> {
    if (t.disposed) return Promise.reject(new LlamaError('ERR_DISPOSED', 'The session was disposed'));
    const now = this.acquireInTurn(t, priority, cells);
    if (now !== undefined) return Promise.resolve(now);
    if (this.#closed || !this.#handle()) return Promise.reject(new LlamaError('ERR_DISPOSED', 'The context has been disposed'));
    return new Promise<number>((resolve, reject) => {
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new LlamaError('ERR_ABORTED', 'Waiting for a sequence was aborted'));
      };
      const waiter: Waiter = {
        tenant: t,
        cells,
        priority,
        order: this.#order++,
        grant: (seq) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(seq);
        },
        fail: (e) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
      this.#waiters.sort((a, b) => b.priority - a.priority || a.order - b.order);
    });
  }

  /**
   * The session's sequence and `n` more for a while (beam search's other beams), all at once or none:
   * from free sequences and idle sessions. Give the `n` back with {@link giveBack}. Undefined when not
   * all can be had now; nothing is held meanwhile, so two searches never wait for each other's sequences.
   */
  acquireWith(t: Tenant, n: number): { seq: number; extra: number[] } | undefined {
    const h = this.#handle();
    if (!h || this.#closed) return undefined;
    const parked = this.#parked.get(t);
    if (parked && !parked.state) return undefined;
    const own = this.#seq.get(t) === undefined ? 1 : 0;
    const idle = [...this.#seq.keys()].filter((s) => s !== t && s.idle).length;
    if (this.#free.length + idle < n + own) return undefined;
    // (The session's own: undefined when its saved cells cannot come back yet beside busy sessions'.)
    const seq = this.acquire(t);
    if (seq === undefined) return undefined;
    const extra: number[] = [];
    while (extra.length < n) extra.push(this.#free.shift() ?? this.#evictFor(t, h)!);
    return { seq, extra };
  }

  giveBack(seqs: readonly number[]): void {
    const h = this.#handle();
    for (const s of seqs) {
      h?.clearSequence(s);
      this.#free.push(s);
    }
    this.#free.sort((a, b) => a - b);
    this.kick();
  }

  /** The session gives up its sequence and its saved state (it is disposed, or empties its cache). */
  release(t: Tenant, clear = true): void {
    this.#dropWaiters(t);
    this.#vacate(t, clear);
    this.#unpark(t);
    this.#used.delete(t);
    this.kick();
  }

  /** The session's sequence, if it holds one, becomes free (emptied first when `clear`). */
  #vacate(t: Tenant, clear: boolean): void {
    const seq = this.#seq.get(t);
    if (seq === undefined) return;
    this.#seq.delete(t);
    this.#owner.delete(seq);
    if (clear) this.#handle()?.clearSequence(seq);
    this.#free.push(seq);
    this.#free.sort((a, b) => a - b);
  }

  /**
   * A session that gives up its sequence no longer waits for one: a wait still queued would be granted a
   * sequence later and keep it (a session disposed while its load() waited held its context's only
   * sequence for good, and every later generation waited forever).
   */
  #dropWaiters(t: Tenant): void {
    for (const w of this.#waiters.filter((x) => x.tenant === t)) {
      this.#waiters = this.#waiters.filter((x) => x !== w);
      w.fail(new LlamaError('ERR_DISPOSED', 'The session was disposed while it waited for a sequence'));
    }
  }

  /**
   * The engine moved the session's cells out of the shared KV cache as its generation ended (contextFull,
   * while others went on): it gives up its sequence, and its cache waits in host memory as if it had been
   * evicted (within the budget), or is forgotten when the state could not be copied.
   */
  evicted(t: Tenant, state: SavedState | null): void {
    this.#vacate(t, false); // the engine emptied it
    this.#unpark(t);
    if (state) {
      const p: Parked = { state: null, pending: null, bytes: 0 };
      this.#parked.set(t, p);
      this.#account(t, p, state);
    } else {
      t.forgetCache();
    }
    this.kick();
  }

  /** Drops the session's saved state, if it has one (its cache is empty from now on). */
  forgetSaved(t: Tenant): void {
    this.#unpark(t);
  }

  /**
   * Gives a session a copy of another one's saved state (a fork of a session that is not resident). The
   * copy counts against the budget like any other.
   */
  shareSaved(from: Tenant, to: Tenant): boolean {
    const p = this.#parked.get(from);
    if (!p) return false;
    const copy: Parked = { state: p.state, pending: null, bytes: 0 };
    this.#parked.set(to, copy);
    this.touch(to);
    if (p.state) this.#account(to, copy, p.state);
    else {
      copy.pending = p.pending!.then(() => {
        const q = this.#parked.get(from);
        if (this.#parked.get(to) !== copy) return;
        if (q?.state) this.#account(to, copy, q.state);
        else this.#drop(to);
      });
    }
    return true;
  }

  /** Saves a resident session's state for another session (a fork when no sequence is free for it). */
  saveFor(from: Tenant, to: Tenant): boolean {
    const seq = this.#seq.get(from);
    const h = this.#handle();
    if (seq === undefined || !h) return false;
    this.#park(to, h.saveSequence(seq));
    return true;
  }

  /** Something changed (a session went idle, a sequence came free): serve the waiters that can be served. */
  kick(): void {
    for (const wake of this.#changes.splice(0)) wake();
    // In order (priority, then arrival); once one waits for room, those after it that need room wait too.
    let aheadWaitsForRoom = false;
    for (const w of [...this.#waiters]) {
      if (aheadWaitsForRoom && w.cells > 0) continue;
      let seq: number | undefined;
      try {
        seq = this.acquire(w.tenant, undefined, w.cells);
      } catch (e) {
        // Nothing a waiter does may strand the others, or escape from a microtask.
        this.#waiters = this.#waiters.filter((x) => x !== w);
        w.fail(e instanceof LlamaError ? e : new LlamaError('ERR_NATIVE', `Could not make the session resident: ${(e as Error)?.message ?? String(e)}`));
        continue;
      }
      if (seq === undefined) {
        aheadWaitsForRoom ||= this.#waitsForRoom(w);
        continue;
      }
      this.#waiters = this.#waiters.filter((x) => x !== w);
      w.grant(seq);
    }
  }

  /** Resolves at the next {@link kick}: something may have come free. */
  changed(): Promise<void> {
    return new Promise<void>((resolve) => this.#changes.push(resolve));
  }

  /** The free sequences' ids (an embedding context uses them all for a while). */
  freeList(): number[] {
    return [...this.#free];
  }

  /** The session's saved state, once it is saved; null when it has none. */
  async savedState(t: Tenant): Promise<SavedState | null> {
    for (;;) {
      const p = this.#parked.get(t);
      if (!p) return null;
      if (p.state) return p.state;
      await p.pending;
    }
  }

  /** The context is disposed: waiters fail, saved states go. */
  close(): void {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w.fail(new LlamaError('ERR_DISPOSED', 'The context was disposed while this waited for a sequence'));
    this.#parked.clear();
    this.#parkedBytes = 0;
    for (const wake of this.#changes.splice(0)) wake();
  }

  /** The least recently used of `tenants` that `ok` accepts. */
  #leastRecentlyUsed(tenants: Iterable<Tenant>, ok: (t: Tenant) => boolean): Tenant | undefined {
    let found: Tenant | undefined;
    let at = Infinity;
    for (const t of tenants) {
      const u = this.#used.get(t) ?? 0;
      if (u < at && ok(t)) {
        at = u;
        found = t;
      }
    }
    return found;
  }

  /**
   * A sequence for `t`: a free one, else an idle session's (evicted). With a KV stream per sequence,
   * llama.cpp decodes a step's rows in one pass over the weights only for sequences with consecutive ids
   * (llama_batch_allocr::split_equal, sequential), so busy sessions whose ids leave gaps between them cost a
   * pass more for each gap at every step (4 chats on the 415M model holding sequences 0 and 13-15: steps of
   * 60-75 ms against 45-55 ms for 9-12). The sequence chosen is next to a busy one where it can be: a free
   * one, else the first of the longest run of free ones (where sessions that come next can join it), else,
   * when one must be evicted anyway, an idle session's next to a busy one (the least recently used of those,
   * where host memory can keep its cache as any evicted one's), else the least recently used idle one.
   * With one KV cache for all sequences (kvUnified) ids do not matter: the lowest free, else the least
   * recently used idle.
   */
  #take(t: Tenant, h: NativeContext, spare?: Tenant): number | undefined {
    if (this.#sharedCells !== null) return this.#free.shift() ?? this.#evictFor(t, h, spare);
    const busy = new Set<number>();
    for (const [s, q] of this.#seq) if (s !== t && !s.idle) busy.add(q);
    const nextToBusy = (q: number) => busy.has(q - 1) || busy.has(q + 1);
    if (this.#free.length > 0) {
      let i = this.#free.findIndex(nextToBusy);
      if (i < 0) i = this.#longestFreeRun();
      return this.#free.splice(i, 1)[0];
    }
    const evictable = (s: Tenant) => s !== t && s !== spare && s.idle;
    // One next to a busy session may be recently used (a conversation between turns): it is taken before the
    // least recently used only where host memory keeps its cache without dropping another's (the bytes a
    // cell takes); otherwise its next turn would decode it all again.
    const kept = (s: Tenant) => this.#bytesPerCell > 0 && s.cells * this.#bytesPerCell <= this.budget - this.#parkedBytes;
    const victim =
      this.#leastRecentlyUsed(this.#seq.keys(), (s) => evictable(s) && nextToBusy(this.#seq.get(s)!) && kept(s)) ??
      this.#leastRecentlyUsed(this.#seq.keys(), evictable);
    return victim ? this.#evict(victim, h) : undefined;
  }

  /** The index in #free (sorted) of the first of its longest run of consecutive ids (the lowest such run). */
  #longestFreeRun(): number {
    let best = 0;
    let bestLength = 0;
    for (let i = 0; i < this.#free.length; ) {
      let j = i + 1;
      while (j < this.#free.length && this.#free[j] === this.#free[j - 1]! + 1) j++;
      if (j - i > bestLength) {
        best = i;
        bestLength = j - i;
      }
      i = j;
    }
    return best;
  }

  #evictFor(requester: Tenant, h: NativeContext, spare?: Tenant): number | undefined {
    const victim = this.#leastRecentlyUsed(this.#seq.keys(), (s) => s !== requester && s !== spare && s.idle);
    return victim ? this.#evict(victim, h) : undefined;
  }

  /** Moves an idle session's cache to host memory and takes its sequence, which it returns (emptied). */
  #evict(victim: Tenant, h: NativeContext): number {
    const seq = this.#seq.get(victim)!;
    this.#seq.delete(victim);
    this.#owner.delete(seq);
    // Both queued on the engine thread, before whatever the new owner queues.
    this.#park(victim, h.saveSequence(seq));
    h.clearSequence(seq);
    return seq;
  }

  #park(t: Tenant, saving: Promise<SavedState>): void {
    this.#unpark(t);
    const p: Parked = { state: null, pending: null, bytes: 0 };
    this.#parked.set(t, p);
    p.pending = saving.then(
      (state) => {
        if (this.#parked.get(t) !== p) return;
        this.#account(t, p, state);
      },
      () => {
        if (this.#parked.get(t) === p) this.#drop(t);
      },
    );
  }

  #account(t: Tenant, p: Parked, state: SavedState): void {
    if (t.cells > 0) this.#bytesPerCell = Math.max(this.#bytesPerCell, state.data.byteLength / t.cells);
    p.state = state;
    p.pending = null;
    p.bytes = state.data.byteLength;
    this.#parkedBytes += p.bytes;
    // Past the budget, the least recently used saved states go (this one too, if it alone is too large).
    while (this.#parkedBytes > this.budget) {
      const oldest = this.#leastRecentlyUsed(this.#parked.keys(), (s) => this.#parked.get(s)!.state !== null);
      if (!oldest) break;
      this.#drop(oldest);
    }
    this.kick();
  }

  #drop(t: Tenant): void {
    if (!this.#parked.has(t)) return;
    this.#unpark(t);
    t.forgetCache();
    this.kick();
  }

  #unpark(t: Tenant): void {
    const p = this.#parked.get(t);
    if (!p) return;
    this.#parked.delete(t);
    this.#parkedBytes -= p.bytes;
  }
}
