/**
 * COPY and ADD: which files of the artifact (or paths of an earlier stage) go where in the guest,
 * with Docker's rules. A directory source copies its contents; several sources, or a destination
 * ending in `/` (or `.`), or a directory known to exist, make the destination a directory; a
 * relative destination is relative to WORKDIR; wildcards (`*`, `?`, `[...]`) match one path
 * component each, against the artifact's file list.
 */
import path from 'node:path';
import { fail } from './fail.ts';
import type { CopyEntry, CopySource, FileInfo } from './types.ts';

const posix = path.posix;

/** The artifact's files and the directories they imply, indexed once per plan. */
export interface ContextIndex {
  files: ReadonlyMap<string, FileInfo>;
  /** Every directory that holds a file, without the root (''). */
  dirs: ReadonlySet<string>;
  /** Every file path, sorted, so that directory copies are deterministic. */
  paths: readonly string[];
}

export function indexContext(files: ReadonlyMap<string, FileInfo>): ContextIndex {
  const dirs = new Set<string>();
  for (const file of files.keys()) {
    for (let dir = posix.dirname(file); dir !== '.' && dir !== '/'; dir = posix.dirname(dir)) dirs.add(dir);
  }
  return { files, dirs, paths: [...files.keys()].sort() };
}

export interface CopyRequest {
  line: number;
  keyword: 'COPY' | 'ADD';
  /** Source paths after variable substitution. */
  sources: string[];
  /** Destination after variable substitution. */
  dest: string;
  cwd: string;
  /** Directories known to exist in the stage's filesystem at this point. */
  knownDirs: ReadonlySet<string>;
}

export interface PlannedCopy {
  sources: CopySource[];
  entries: CopyEntry[];
  destIsDirectory: boolean;
  /** Directories that exist once the copy is done (ancestors not included). */
  dirs: string[];
}

/** `/a/b/c` → [`/a/b/c`, `/a/b`, `/a`, `/`]. */
export function withAncestors(dir: string): string[] {
  const all = [dir];
  for (let d = dir; d !== '/'; ) all.push((d = posix.dirname(d)));
  return all;
}

const WILDCARD = /[*?[]/;
const ARCHIVE = /\.(tar|tgz|tbz|tbz2|txz|tzst|tar\.[a-z0-9]+)$/i;
const REMOTE = /^([a-z][a-z0-9+.-]*:\/\/|git@)/i;

function resolveDest(request: CopyRequest): { dest: string; dirSyntax: boolean } {
  const raw = request.dest;
  const dirSyntax = raw === '' || raw === '.' || raw === '..' || /\/(\.\.?)?$/.test(raw);
  if (request.sources.length > 1 && !dirSyntax) {
    fail('dockerfile.invalid', request.line, `${request.keyword} with more than one source needs a destination directory ending in /`, { dest: raw });
  }
  return { dest: posix.resolve(request.cwd, raw), dirSyntax };
}

/** Normalizes a context path: `./a/`, `/a` → `a`; the context root → ''; rejects paths that leave it. */
function contextPath(raw: string, request: CopyRequest): string {
  const normalized = posix.normalize(raw.replace(/^\/+/, '') || '.').replace(/\/+$/, '');
  if (normalized === '..' || normalized.startsWith('../')) {
    fail('dockerfile.invalid', request.line, `${request.keyword} source ${raw} is outside the build context`, { source: raw });
  }
  return normalized === '.' ? '' : normalized;
}

function escapeRegExp(ch: string): string {
  return /[\\^$.*+?()[\]{}|/-]/.test(ch) ? `\\${ch}` : ch;
}

/** Go's `filepath.Match` syntax as a regular expression over whole relative paths. */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') re += '[^/]*';
    else if (ch === '?') re += '[^/]';
    else if (ch === '\\' && i + 1 < pattern.length) re += escapeRegExp(pattern[++i]!);
    else if (ch === '[') {
      let j = i + 1;
      const negate = pattern[j] === '^' || pattern[j] === '!';
      if (negate) j++;
      let body = '';
      for (; j < pattern.length && pattern[j] !== ']'; j++) {
        const c = pattern[j]!;
        if (c === '\\' && j + 1 < pattern.length) body += escapeRegExp(pattern[++j]!);
        else body += c === '-' ? '-' : escapeRegExp(c);
      }
      if (j >= pattern.length || body === '') throw new SyntaxError(`bad character class in ${pattern}`);
      re += negate ? `[^/${body}]` : `[${body}]`;
      i = j;
    } else re += escapeRegExp(ch);
  }
  return new RegExp(`^${re}$`);
}

type Match = { kind: 'file'; path: string } | { kind: 'dir'; path: string };

function matchSource(raw: string, request: CopyRequest, context: ContextIndex): Match[] {
  const normalized = contextPath(raw, request);
  if (!WILDCARD.test(normalized)) {
    if (normalized === '' || context.dirs.has(normalized)) return [{ kind: 'dir', path: normalized }];
    return context.files.has(normalized) ? [{ kind: 'file', path: normalized }] : [];
  }
  let pattern: RegExp;
  try {
    pattern = globToRegExp(normalized);
  } catch {
    fail('dockerfile.syntax', request.line, `invalid ${request.keyword} source pattern ${raw}`, { source: raw });
  }
  const matches: Match[] = [];
  for (const dir of [...context.dirs].sort()) if (pattern.test(dir)) matches.push({ kind: 'dir', path: dir });
  for (const file of context.paths) if (pattern.test(file)) matches.push({ kind: 'file', path: file });
  return matches.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function filesUnder(dir: string, context: ContextIndex): string[] {
  if (dir === '') return [...context.paths];
  const prefix = `${dir}/`;
  return context.paths.filter((file) => file.startsWith(prefix));
}

export function planContextCopy(request: CopyRequest, context: ContextIndex): PlannedCopy {
  const { dest, dirSyntax } = resolveDest(request);
  const matched: Match[] = [];
  for (const raw of request.sources) {
    if (REMOTE.test(raw)) {
      fail('dockerfile.unsupported_instruction', request.line, `${request.keyword} of a URL (${raw}) is not supported; download it in a RUN step`, { instruction: request.keyword, source: raw });
    }
    const matches = matchSource(raw, request, context);
    // A wildcard may match nothing (`COPY package.json yarn.lock* ./` is a common idiom), a plain path may not.
    if (matches.length === 0 && !WILDCARD.test(raw)) {
      fail('dockerfile.copy_source_missing', request.line, `${request.keyword} source ${raw} is not in the artifact`, { source: raw });
    }
    if (request.keyword === 'ADD') {
      const archive = matches.find((m) => m.kind === 'file' && ARCHIVE.test(m.path));
      if (archive) {
        fail('dockerfile.unsupported_instruction', request.line, `ADD of a local archive (${archive.path}) is not supported: it would be extracted; use COPY and RUN tar`, { instruction: 'ADD', source: archive.path });
      }
    }
    matched.push(...matches);
  }
  if (matched.length === 0) {
    fail('dockerfile.copy_source_missing', request.line, `${request.keyword} sources ${request.sources.join(' ')} match no file in the artifact`, { sources: request.sources });
  }
  if (matched.length === 0) {
    fail('dockerfile.copy_source_missing', request.line, `${request.keyword} sources ${request.sources.join(' ')} match no file in the artifact`, { sources: request.sources });
  }
  const destIsDirectory = dirSyntax || request.knownDirs.has(dest) || matched.length > 1;
  const byDest = new Map<string, string>();
  const place = (target: string, source: string): void => {
    byDest.delete(target); // a later copy of the same destination wins, and is written last
    byDest.set(target, source);
  };
  const dirs = new Set<string>();
  for (const match of matched) {
    if (match.kind === 'file') {
      place(destIsDirectory ? posix.join(dest, posix.basename(match.path)) : dest, match.path);
      continue;
    }
    dirs.add(dest);
    const prefixLength = match.path === '' ? 0 : match.path.length + 1;
    for (const file of filesUnder(match.path, context)) place(posix.join(dest, file.slice(prefixLength)), file);
  }
  if (destIsDirectory) dirs.add(dest);
  const entries: CopyEntry[] = [];
  const sources = new Map<string, CopySource>();
  for (const [target, source] of byDest) {
    entries.push({ source, dest: target });
    dirs.add(posix.dirname(target));
    const info = context.files.get(source)!;
    if (!sources.has(source)) sources.set(source, { from: 'context', path: source, sha256: info.sha256, mode: info.mode });
  }
  return { sources: [...sources.values()], entries, destIsDirectory, dirs: [...dirs] };
}

/** COPY --from: the other stage's paths are not known here; the executor resolves them in that stage. */
export function planStageCopy(request: CopyRequest, stage: number): PlannedCopy {
  const { dest, dirSyntax } = resolveDest(request);
  const destIsDirectory = dirSyntax || request.knownDirs.has(dest);
  const sources: CopySource[] = request.sources.map((raw) => ({ from: 'stage', stage, path: posix.resolve('/', raw) }));
  const entries = sources.map((source) => ({ source: source.path, dest }));
  return { sources, entries, destIsDirectory, dirs: [destIsDirectory ? dest : posix.dirname(dest)] };
}
