/**
 * Entry script: SCENARIO=load|spike|hot|sellout|async|chaos|ceiling|smoke (default load).
 * Everything else lives in lib.js; `python manage.py loadtest` sets the environment.
 *
 *   k6 run -e SCENARIO=spike -e BASE_URL=http://127.0.0.1:8080 loadtest/k6/main.js
 */
import { SharedArray } from 'k6/data';
import { iterate, needsTokens, optionsFor } from './lib.js';

const SCENARIO = __ENV.SCENARIO || 'load';

// The token of user N at index N. A SharedArray is parsed once and shared by every VU: with
// 100,000 customers a copy per VU made k6 slow to start and 3.4 GB big (measured).
const TOKENS = needsTokens(SCENARIO)
  ? new SharedArray('tokens', () => {
      const byUser = JSON.parse(open(__ENV.TOKENS_FILE || '../tokens.json'));
      const byIndex = [];
      for (const [userId, token] of Object.entries(byUser)) byIndex[Number(userId)] = token;
      return Array.from(byIndex, (token) => token || '');
    })
  : [];

export const options = optionsFor(SCENARIO);

export default function () {
  iterate(SCENARIO, TOKENS);
}
