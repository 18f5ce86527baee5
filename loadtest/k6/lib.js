/**
 * The one shared module of the load-test scripts: configuration from the environment, the
 * seed report's order payload, answer checks, counters, failure logging and every scenario's
 * k6 options. `main.js` only picks the scenario.
 *
 * Environment (all optional):
 *   BASE_URL        server to test (default http://127.0.0.1:8080)
 *   BASE_URLS       several hosts, comma-separated (in place of BASE_URL): VU n uses host (n - 1) % N
 *   VUS             peak virtual users (default 100; smoke 5)
 *   DURATION_SCALE  multiplies every stage duration (default 1)
 *   LIKE            borrow another scenario's VU profile and peak (the ceiling run beside a load run)
 *   USERS, PRODUCTS, PRICE   the seeded shape (default 500, 5, 1)
 *   ITERATIONS      orders sent by the sellout scenario (default 3000)
 *   TOKENS_FILE     the seed's {"<userId>": "<token>"} file (default ../tokens.json)
 *   WARN_INTERVAL_S at most one failure warning per VU this often (default 10)
 *   CHAOS_ORDERS    chaos: the careful clients' orders, async (202), sync (201) or both (default async)
 *   CHAOS_KEYS      chaos: 1 (default) an Idempotency-Key per order; 0 none (async: Redis' intake path)
 */
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';

function env(name, fallback) {
  const value = __ENV[name];
  return value === undefined || value === '' ? fallback : value;
}

const BASE_URL = env('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
// Several hosts: each VU sends every request to one host, tagged host=h<i> (1-based), so the
// summary counts each host's requests and orders (the per-host thresholds in optionsFor).
const BASE_URLS = env('BASE_URLS', '')
  .split(',')
  .filter((url) => url)
  .map((url) => url.replace(/\/+$/, ''));
const DURATION_SCALE = Number(env('DURATION_SCALE', '1'));
const USERS = Number(env('USERS', '500'));
const PRODUCTS = Number(env('PRODUCTS', '5'));
const PRICE = Number(env('PRICE', '1'));
const ITERATIONS = Number(env('ITERATIONS', '3000'));
const WARN_INTERVAL_MS = Number(env('WARN_INTERVAL_S', '10')) * 1000;
const CHAOS_ORDERS = env('CHAOS_ORDERS', 'async');
const CHAOS_KEYS = env('CHAOS_KEYS', '1') === '1';

// Counted per answer, read back by the runner from k6's summary and time series.
const ordersCreated = new Counter('orders_created');
const errorsByCode = new Counter('errors_by_code');
// An answer the scenario does not accept: failures in the report, whatever the HTTP status.
const unexpectedAnswers = new Rate('unexpected_answers');
// Chaos: each order's last answer to a careful client (tag `answer`: its status, 0 for none),
// and each order a careful client began: one begun and never finished is one k6 cut off at its
// end (an interrupted iteration), a client left without an answer too.
const chaosFinal = new Counter('chaos_final');
const chaosBegun = new Counter('chaos_begun');

const EXPECT_201 = http.expectedStatuses(201);
// Sellout: a 409 is an answer, not a broken request; whether it is OUT_OF_STOCK is checked below.
const EXPECT_201_OR_409 = http.expectedStatuses(201, 409);
const EXPECT_200 = http.expectedStatuses(200);
// Async: the order is accepted (202) and paid later by a settler, in a batch.
const EXPECT_202 = http.expectedStatuses(202);

function randomInt(min, max) {
  return Math.floor(Math.random() * (max - min + 1)) + min;
}

function seconds(value) {
  return `${Math.max(1, Math.round(value * DURATION_SCALE))}s`;
}

// Ramp-downs and stops wait as long as gunicorn's worker timeout (30 s): no request the server
// may still commit is ever abandoned by k6, so orders in the database match the 201s counted.
const GRACE = '30s';
// The careful clients' (chaos): a request cut off by a fault leaves its Idempotency-Key in
// progress, taken over by a retry only after IDEMPOTENCY_STALE_SECONDS (60 s); its client
// retries that long (CAREFUL_TRIES answers of 409 CONFLICT, each after the server's 10 s wait).
const CAREFUL_GRACE = '90s';

function ramping(stages, grace = GRACE) {
  return {
    executor: 'ramping-vus',
    startVUs: 0,
    stages: stages.map(([duration, target]) => ({ duration: seconds(duration), target })),
    gracefulRampDown: grace,
    gracefulStop: grace,
  };
}

// VU profiles, `vus` being the peak. load and spike are the seed report's stages exactly.
const PROFILES = {
  load: (vus) => ramping([[60, vus], [120, vus], [60, 0]]),
  careful: (vus) => ramping([[60, vus], [120, vus], [60, 0]], CAREFUL_GRACE),
  spike: (vus) => ramping([[30, Math.max(1, Math.round(vus / 10))], [30, vus], [30, 0]]),
  sellout: (vus) => ({
    executor: 'shared-iterations',
    vus,
    iterations: ITERATIONS,
    maxDuration: seconds(300),
    gracefulStop: GRACE,
  }),
  smoke: (vus) => ({ executor: 'constant-vus', vus, duration: seconds(10), gracefulStop: GRACE }),
};

// The seed report's order: 1 to 3 items, products 1..5, quantities 1..5, price 1.
function randomItems() {
  const count = randomInt(1, 3);
  const items = [];
  for (let i = 0; i < count; i++) {
    items.push({ productId: randomInt(1, PRODUCTS), quantity: randomInt(1, 5), price: PRICE });
  }
  return items;
}

// Every order on product 1: one hot key for stock, as a flash sale of one item.
function hotItems() {
  return [{ productId: 1, quantity: randomInt(1, 5), price: PRICE }];
}

function target() {
  if (!BASE_URLS.length) return { url: BASE_URL, tags: {} };
  const index = (__VU - 1) % BASE_URLS.length;
  return { url: BASE_URLS[index], tags: { host: `h${index + 1}` } };
}

// The host after `host` (with one host, itself): where a careful client's retry goes after no answer.
function nextHost(host) {
  if (BASE_URLS.length < 2) return host;
  const index = (BASE_URLS.indexOf(host.url) + 1) % BASE_URLS.length;
  return { url: BASE_URLS[index], tags: { host: `h${index + 1}` } };
}

function errorCode(res) {
  if (res.status === 0) return `NETWORK_${res.error_code || 'ERROR'}`;
  try {
    const body = res.json();
    if (body && body.error && body.error.code) return String(body.error.code);
  } catch (e) {
    // not JSON: fall through to the status
  }
  return `HTTP_${res.status}`;
}

// Per VU: the first failure is logged, then at most one per WARN_INTERVAL_MS with a count of
// the ones skipped, so a broken run cannot drown k6's progress output.
let lastWarnAt = 0;
let skippedWarnings = 0;

function warnFailure(res, code) {
  const now = Date.now();
  if (lastWarnAt && now - lastWarnAt < WARN_INTERVAL_MS) {
    skippedWarnings += 1;
    return;
  }
  const skipped = skippedWarnings ? ` (+${skippedWarnings} more on this VU since the last warning)` : '';
  const body = String(res.body || '').slice(0, 300);
  console.warn(
    `Failed Status : ${res.status} / Code : ${code} / Duration : ${res.timings.duration}ms / Body : ${body}${skipped}`,
  );
  lastWarnAt = now;
  skippedWarnings = 0;
}

function record(res, code, expected, tags) {
  if (res.status === 201 || res.status === 202) ordersCreated.add(1, tags);
  if (code) errorsByCode.add(1, { code });
  unexpectedAnswers.add(!expected);
  if (!expected) warnFailure(res, code);
}

function placeOrder(tokens, items, outOfStockExpected, asynchronous = false) {
  const userId = randomInt(1, USERS);
  const headers = { 'Content-Type': 'application/json', Authorization: `Bearer ${tokens[userId]}` };
  if (asynchronous) headers.Prefer = 'respond-async';
  const success = asynchronous ? 202 : 201;
  const host = target();
  const res = http.post(`${host.url}/api/v1/orders`, JSON.stringify({ userId, orderItems: items }), {
    headers,
    tags: host.tags,
    responseCallback: asynchronous ? EXPECT_202 : outOfStockExpected ? EXPECT_201_OR_409 : EXPECT_201,
  });
  const code = res.status === success ? null : errorCode(res);
  const expected = res.status === success || (outOfStockExpected && res.status === 409 && code === 'OUT_OF_STOCK');
  const label = outOfStockExpected ? 'status is 201 or 409 OUT_OF_STOCK' : `status is ${success}`;
  check(res, { [label]: () => expected });
  record(res, code, expected, host.tags);
}

// A careful client, as docs/api.md asks of real ones: one Idempotency-Key per order, the same
// order sent again on no answer (timeout, refused, reset), 502, 503 and 504, waiting Retry-After
// when given, else an exponential backoff with jitter, at most CAREFUL_TRIES times. A 409
// CONFLICT is the key still in progress (an earlier try not answered yet): waited for likewise.
// Without a key (CHAOS_KEYS=0: the asynchronous order then takes Redis' intake path) only a 503
// is retried, which says nothing was changed; after no answer or a 502/504 the order may exist,
// and a client without a key cannot safely send it again: it gives up (counted as such).
// With several hosts, a try that got no answer (its host dead, say) is sent to the next host,
// as a load balancer takes a host that does not answer out; the next order starts on the VU's own.
const CAREFUL_TRIES = 8;
// Above the server's IDEMPOTENCY_WAIT_SECONDS (10 s): a retry whose key is still in progress
// gets the server's 409 CONFLICT after that wait, not a timeout of its own at the same moment.
const CAREFUL_TIMEOUT = '15s';
const RETRIED = new Set([0, 502, 503, 504]);

function orderKey() {
  return `chaos-${__VU}-${__ITER}-${Date.now()}-${randomInt(0, 1e9)}`;
}

function backoffSeconds(res, attempt) {
  const after = Number(res.headers && res.headers['Retry-After']);
  if (after > 0) return Math.min(after, 5) * (0.5 + Math.random() / 2);
  return Math.min(0.1 * 2 ** attempt, 3) * (0.5 + Math.random());
}

function carefulOrder(tokens) {
  const asynchronous = CHAOS_ORDERS === 'async' || (CHAOS_ORDERS === 'both' && Math.random() < 0.5);
  const success = asynchronous ? 202 : 201;
  const userId = randomInt(1, USERS);
  const headers = {
    'Content-Type': 'application/json',
    Authorization: `Bearer ${tokens[userId]}`,
  };
  if (CHAOS_KEYS) headers['Idempotency-Key'] = orderKey();
  if (asynchronous) headers.Prefer = 'respond-async';
  const body = JSON.stringify({ userId, orderItems: randomItems() });
  let host = target();
  chaosBegun.add(1);
  let res;
  for (let attempt = 0; attempt < CAREFUL_TRIES; attempt++) {
    if (attempt > 0 && res.status === 0) host = nextHost(host);
    res = http.post(`${host.url}/api/v1/orders`, body, {
      headers,
      tags: host.tags,
      timeout: CAREFUL_TIMEOUT,
      responseCallback: asynchronous ? EXPECT_202 : EXPECT_201,
    });
    const code = res.status === success ? null : errorCode(res);
    if (code) errorsByCode.add(1, { code });
    const inProgress = res.status === 409 && code === 'CONFLICT';
    if (CHAOS_KEYS ? !RETRIED.has(res.status) && !inProgress : res.status !== 503) break;
    if (attempt + 1 < CAREFUL_TRIES) sleep(backoffSeconds(res, attempt));
  }
  const expected = res.status === success;
  check(res, { [`last answer is ${success}`]: () => expected });
  if (expected) ordersCreated.add(1, host.tags);
  chaosFinal.add(1, { answer: String(res.status) });
  unexpectedAnswers.add(!expected);
  if (!expected) warnFailure(res, errorCode(res));
}

function healthz() {
  const host = target();
  const res = http.get(`${host.url}/healthz`, { responseCallback: EXPECT_200, tags: host.tags });
  const expected = res.status === 200;
  check(res, { 'status is 200': () => expected });
  record(res, expected ? null : errorCode(res), expected, host.tags);
}

const SCENARIOS = {
  load: { profile: 'load', peakVus: 100, run: (tokens) => placeOrder(tokens, randomItems(), false) },
  spike: { profile: 'spike', peakVus: 100, run: (tokens) => placeOrder(tokens, randomItems(), false) },
  hot: { profile: 'load', peakVus: 100, run: (tokens) => placeOrder(tokens, hotItems(), false) },
  sellout: { profile: 'sellout', peakVus: 100, run: (tokens) => placeOrder(tokens, randomItems(), true) },
  async: { profile: 'load', peakVus: 100, run: (tokens) => placeOrder(tokens, randomItems(), false, true) },
  ceiling: { profile: 'load', peakVus: 100, run: () => healthz(), noTokens: true },
  chaos: { profile: 'careful', peakVus: 100, run: (tokens) => carefulOrder(tokens) },
  smoke: { profile: 'smoke', peakVus: 5, run: (tokens) => placeOrder(tokens, randomItems(), false) },
};

function scenario(name) {
  const found = SCENARIOS[name];
  if (!found) throw new Error(`unknown SCENARIO "${name}"; one of ${Object.keys(SCENARIOS).join(', ')}`);
  return found;
}

export function needsTokens(name) {
  return !scenario(name).noTokens;
}

// A threshold that always holds puts the metric of each host's requests in the summary export;
// the runner reads them as the per-host counts, not as thresholds (results.py).
function perHostCounts() {
  const counts = {};
  BASE_URLS.forEach((_, index) => {
    counts[`http_reqs{host:h${index + 1}}`] = ['count>=0'];
    counts[`orders_created{host:h${index + 1}}`] = ['count>=0'];
  });
  return counts;
}

export function optionsFor(name) {
  const shape = scenario(env('LIKE', name));
  const vus = Number(env('VUS', String(shape.peakVus)));
  return {
    scenarios: { [name]: PROFILES[shape.profile](vus) },
    // The seed report's thresholds, plus the same failure budget for answers the scenario rejects.
    thresholds: {
      http_req_duration: ['p(99)<200'],
      http_req_failed: ['rate<0.01'],
      unexpected_answers: ['rate<0.01'],
      ...perHostCounts(),
    },
    summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
    // Fewer tags keep the per-request time series (the report's chart) small.
    systemTags: ['status', 'method', 'scenario', 'expected_response', 'check', 'error_code'],
  };
}

export function iterate(name, tokens) {
  scenario(name).run(tokens);
}
