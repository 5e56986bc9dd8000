// Inputs this browser submitted, keyed by upload id. The API has no download of an upload, so
// job pages can show an input next to its outputs only when this console uploaded it: the
// file itself is kept in IndexedDB (object URLs die with the page). Bounded (newest
// MAX_ENTRIES, MAX_AGE_MS) and wiped when the user forgets the API key.

const DB_NAME = "visionjobs-console";
const STORE = "inputs";
const MAX_ENTRIES = 40;
const MAX_AGE_MS = 7 * 24 * 3600 * 1000;

let dbPromise = null;

function open() {
  if (!("indexedDB" in window)) return Promise.resolve(null);
  dbPromise ??= new Promise((resolve) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null); // private modes may refuse: the console works without it
  });
  return dbPromise;
}

function run(mode, fn) {
  return open().then((db) => db && new Promise((resolve) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req?.result);
    tx.onerror = tx.onabort = () => resolve(undefined);
  }));
}

export async function rememberInput(uploadId, blob) {
  await run("readwrite", (s) => s.put({ blob, type: blob.type, at: Date.now() }, uploadId));
  await prune();
}

async function prune() {
  const entries = (await run("readonly", (s) => s.getAll())) || [];
  const keys = (await run("readonly", (s) => s.getAllKeys())) || [];
  const now = Date.now();
  const ranked = keys.map((k, i) => [k, entries[i]?.at || 0]).sort((a, b) => b[1] - a[1]);
  const drop = ranked.filter(([, at], i) => i >= MAX_ENTRIES || now - at > MAX_AGE_MS).map(([k]) => k);
  if (drop.length) await run("readwrite", (s) => { drop.forEach((k) => s.delete(k)); return null; });
}

const urls = new Map();

/** An object URL for the input kept under `uploadId`, or null when this browser never had it. */
export async function inputUrl(uploadId) {
  if (!uploadId) return null;
  if (urls.has(uploadId)) return urls.get(uploadId);
  const entry = await run("readonly", (s) => s.get(uploadId));
  if (!entry?.blob) return null;
  const u = URL.createObjectURL(entry.blob);
  urls.set(uploadId, u);
  return u;
}

/** The file name of the input kept under `uploadId` (a File keeps its name in IndexedDB), or null. */
export async function inputName(uploadId) {
  if (!uploadId) return null;
  const entry = await run("readonly", (s) => s.get(uploadId));
  return entry?.blob?.name || null;
}

export async function forgetInputs() {
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls.clear();
  await run("readwrite", (s) => s.clear());
}
