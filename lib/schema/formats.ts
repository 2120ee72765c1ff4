// The `format`s the grammar enforces, each twice: as a pattern for the grammar (which may be narrower
// than the format, never wider: no 29 February, no leap second, time zones written as Z or ±hh:mm), and
// as the check ajv runs on the output (the format's full definition).

/** Formats of strings: the pattern the grammar writes. */
export const STRING_FORMAT_PATTERNS: Readonly<Record<string, string>> = {
  date: `^${date()}$`,
  time: `^${time()}$`,
  'date-time': `^${date()}T${time()}$`,
  uuid: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
  ipv4: '^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$',
};

/** Formats of numbers: the bounds they add (int32, int64) or nothing (float, double). */
export const NUMBER_FORMAT_BOUNDS: Readonly<Record<string, { minimum?: number; maximum?: number }>> = {
  int32: { minimum: -(2 ** 31), maximum: 2 ** 31 - 1 },
  int64: { minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
  float: {},
  double: {},
};

function date(): string {
  return '[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))';
}

function time(): string {
  return '(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])';
}

const DAYS = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function validDate(s: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  return mo >= 1 && mo <= 12 && d >= 1 && d <= (mo === 2 && leap ? 29 : DAYS[mo]);
}

// RFC 3339 full-time: a time zone is required; 60 seconds only as a leap second at 23:59 UTC.
function validTime(s: string): boolean {
  const m = /^(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:z|([+-])(\d{2}):(\d{2}))$/i.exec(s);
  if (!m) return false;
  const [h, mi, sec] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const [zh, zm] = [Number(m[5] ?? 0), Number(m[6] ?? 0)];
  if (h > 23 || mi > 59 || sec > 60 || zh > 23 || zm > 59) return false;
  if (sec === 60) {
    const sign = m[4] === '-' ? 1 : -1;
    const utc = (((h * 60 + mi + sign * (zh * 60 + zm)) % 1440) + 1440) % 1440;
    return utc === 23 * 60 + 59;
  }
  return true;
}

const UUID = /^(?:urn:uuid:)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const IPV4 = new RegExp(STRING_FORMAT_PATTERNS.ipv4);

/** The format checks given to ajv. */
export const AJV_FORMATS = {
  date: { type: 'string', validate: validDate },
  time: { type: 'string', validate: validTime },
  'date-time': {
    type: 'string',
    validate: (s: string) => {
      const i = s.search(/[tT ]/);
      return i === 10 && validDate(s.slice(0, i)) && validTime(s.slice(i + 1));
    },
  },
  uuid: { type: 'string', validate: (s: string) => UUID.test(s) },
  ipv4: { type: 'string', validate: (s: string) => IPV4.test(s) },
  int32: { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n <= 2 ** 31 - 1 },
  int64: { type: 'number', validate: (n: number) => Number.isInteger(n) && Number.isSafeInteger(n) },
  float: { type: 'number', validate: () => true },
  double: { type: 'number', validate: () => true },
} as const;
