/**
 * Output formats of the CLI, as pure functions of the (already --query'd) result:
 * - json: indented JSON, the default (like the AWS CLI);
 * - text: tab-separated values for scripts: a scalar as is, an object's scalar fields on one line
 *   (keys sorted), nested lists and objects on their own lines prefixed with the key in capitals;
 * - table: a boxed table: a list of objects as rows (columns = their scalar fields), an object as
 *   key/value rows; a single-key object holding a list (`{ images: [...] }`) is titled by the key.
 */
export const OUTPUT_FORMATS = ['json', 'text', 'table'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

type Scalar = string | number | boolean | null | undefined;

const isScalar = (value: unknown): value is Scalar => value === null || value === undefined || typeof value !== 'object';
const isPlainObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

function scalarText(value: Scalar): string {
  return value === null || value === undefined ? 'None' : String(value);
}

export function formatOutput(value: unknown, format: OutputFormat): string {
  if (format === 'json') return `${JSON.stringify(value ?? null, null, 4)}\n`;
  const lines = format === 'text' ? textLines(value) : tableLines(value);
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

// ---- text

export function textLines(value: unknown): string[] {
  if (isScalar(value)) return [scalarText(value)];
  if (Array.isArray(value)) {
    if (value.every(isScalar)) return value.length === 0 ? [] : [value.map(scalarText).join('\t')];
    return value.flatMap(textLines);
  }
  const object = value as Record<string, unknown>;
  const keys = Object.keys(object).sort();
  const scalars = keys.filter((key) => isScalar(object[key]));
  const lines = scalars.length > 0 ? [scalars.map((key) => scalarText(object[key] as Scalar)).join('\t')] : [];
  for (const key of keys.filter((k) => !isScalar(object[k]))) {
    for (const line of textLines(object[key])) lines.push(`${key.toUpperCase()}\t${line}`);
  }
  return lines;
}

// ---- table

export function tableLines(value: unknown): string[] {
  if (isPlainObject(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && Array.isArray(value[keys[0]!])) return boxed(keys[0]!, rowsOf(value[keys[0]!] as unknown[]));
    return boxed(undefined, keyValueRows(value));
  }
  if (Array.isArray(value)) return boxed(undefined, rowsOf(value));
  return boxed(undefined, { header: undefined, rows: [[cell(value)]] });
}

interface Rows {
  header: string[] | undefined;
  rows: string[][];
}

function cell(value: unknown): string {
  // One line per row: nested values are shown as compact JSON, line breaks as spaces.
  return (isScalar(value) ? scalarText(value) : JSON.stringify(value)).replace(/[\r\n\t]+/g, ' ');
}

function rowsOf(items: unknown[]): Rows {
  if (items.length > 0 && items.every(isPlainObject)) {
    const columns: string[] = [];
    for (const item of items) for (const [key, field] of Object.entries(item)) if (isScalar(field) && !columns.includes(key)) columns.push(key);
    if (columns.length > 0) return { header: columns, rows: items.map((item) => columns.map((column) => (column in item ? cell(item[column]) : ''))) };
  }
  return { header: undefined, rows: items.map((item) => [cell(item)]) };
}

function keyValueRows(object: Record<string, unknown>): Rows {
  return { header: undefined, rows: Object.entries(object).map(([key, field]) => [key, cell(field)]) };
}

function boxed(title: string | undefined, { header, rows }: Rows): string[] {
  const all = header ? [header, ...rows] : rows;
  if (all.length === 0) return title === undefined ? [] : boxed(undefined, { header: undefined, rows: [[title]] });
  const columns = Math.max(...all.map((row) => row.length));
  const widths = Array.from({ length: columns }, (_, i) => Math.max(...all.map((row) => width(row[i] ?? ''))));
  // The inner width of the whole table: cells, their padding and the separators between them.
  const inner = (): number => widths.reduce((sum, w) => sum + w + 3, -1);
  if (title !== undefined && width(title) + 2 > inner()) widths[columns - 1]! += width(title) + 2 - inner();
  const rule = `+${widths.map((w) => '-'.repeat(w + 2)).join('+')}+`;
  const line = (row: string[]): string => `|${widths.map((w, i) => ` ${pad(row[i] ?? '', w)} `).join('|')}|`;
  const lines = [rule];
  if (title !== undefined) {
    const left = Math.floor((inner() - width(title)) / 2);
    lines.push(`|${' '.repeat(left)}${title}${' '.repeat(inner() - width(title) - left)}|`, rule);
  }
  if (header) lines.push(line(header), rule);
  for (const row of rows) lines.push(line(row));
  lines.push(rule);
  return lines;
}

function width(text: string): number {
  return [...text].length;
}

function pad(text: string, to: number): string {
  return text + ' '.repeat(to - width(text));
}
