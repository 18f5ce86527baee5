/**
 * Entry script: SCENARIO=load|spike|hot|sellout|async|ceiling|smoke (default load).
 * Everything else lives in lib.js; `python manage.py loadtest` sets the environment.
 *
 *   k6 run -e SCENARIO=spike -e BASE_URL=http://127.0.0.1:8080 loadtest/k6/main.js
 */
import { iterate, needsTokens, optionsFor } from './lib.js';

const SCENARIO = __ENV.SCENARIO || 'load';

// open() only works here, in the init context; each VU keeps its own parsed copy (~30 kB).
const TOKENS = needsTokens(SCENARIO) ? JSON.parse(open(__ENV.TOKENS_FILE || '../tokens.json')) : {};

export const options = optionsFor(SCENARIO);

export default function () {
  iterate(SCENARIO, TOKENS);
}
