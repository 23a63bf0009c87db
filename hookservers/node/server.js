#!/usr/bin/env node
// upparat-node-example: the hook contract served from Node.js, the worked example of "hook
// servers in any gRPC language". It loads proto/upparat/hooks/v1/hooks.proto at run time and
// runs upparat 1.12 hook scripts the way the reference server (hookservers/shell) does. It
// depends on the contract only: nothing of upparat's Python code, no generated stubs.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const net = require('node:net');
const os = require('node:os');
const readline = require('node:readline');
const { spawn } = require('node:child_process');
const { parseArgs, promisify } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');

const SERVER_NAME = 'upparat-node-example';
const SERVER_VERSION = require('./package.json').version;
const DEFAULT_ENDPOINT = 'unix:///run/upparat/hooks.sock';
const DEFAULT_SCRIPT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const RETRY_EXIT_CODE = 3; // upparat 1.12: "call me again later"
const RETRY_AFTER = /^retry-after=(\S+)$/; // ...optionally with this as the last stdout line
const PERCENT = /(?<![\d.])(\d{1,3})(?:\.\d+)?\s?%/; // "40%" in a progress line, e.g. RAUC's
const MAX_LINE_CHARS = 1024; // the contract's messages are one short line
const STDERR_TAIL_BYTES = 1024; // a failure's detail: the end of stderr
const PROGRESS_INTERVAL_MS = 200; // the contract: progress "not more than a few times a second"
const LOG_LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40 };

// The hooks this server implements: hook name -> its RPC and its value of enum Hook.
// HookService.CheckDownload is deliberately left out, to show that every hook is optional:
// grpc-js answers UNIMPLEMENTED for it, and the daemon then downloads without asking, as
// upparat 1.12 did without a download script.
const HOOKS = {
  version: { rpc: 'GetVersion', hook: 'HOOK_VERSION' },
  install: { rpc: 'Install', hook: 'HOOK_INSTALL' },
  restart: { rpc: 'Restart', hook: 'HOOK_RESTART' },
  ready: { rpc: 'CheckReady', hook: 'HOOK_READY' },
};
const SERVICES = ['upparat.hooks.v1.HookService', 'upparat.hooks.v1.IdentityService'];

// The scripts' HOME: the server's user's home directory, as a login shell would set it.
const HOME = (() => {
  try {
    return os.userInfo().homedir || '/';
  } catch {
    return '/'; // a uid without a passwd entry
  }
})();

let logLevel = LOG_LEVELS.INFO;
function log(level, line) {
  if (LOG_LEVELS[level] >= logLevel) console.error(`${SERVER_NAME} ${level}: ${line}`);
}

// --- configuration -----------------------------------------------------------------

const USAGE = `usage: node server.js [-c /etc/upparat/upparat.conf] [--listen unix:/path/hooks.sock]
         [--version-script P] [--install-script P] [--restart-script P] [--ready-script P]
         [--grace-period SECONDS] [--proto-root DIR] [--log-level LEVEL]

Reads [hooks] and [hookserver] of the upparat INI file, as upparat-hookserver does; the
options override it. Exit status 2: the configuration or a script is unusable.`;

// [hookserver] keys, as upparat-hookserver reads them (docs/config.md).
const HOOKSERVER_KEYS = [
  'listen',
  'default_retry_after',
  'cancel_grace_period',
  'socket_mode',
  'script_path',
  'log_level',
];

// The upparat INI file in configparser's basic syntax: [section], `key = value` (or
// `key: value`), whole-line # and ; comments, keys in any case.
function readIni(file) {
  const sections = {};
  let current = null;
  const lines = fs.readFileSync(file, 'utf8').split(/\r?\n/);
  lines.forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const header = /^\[(.+)\]$/.exec(line);
    const pair = /^([^=:]+?)\s*[=:]\s*(.*)$/.exec(line);
    if (header) current = sections[header[1]] ??= {};
    else if (pair && current) current[pair[1].toLowerCase()] = pair[2];
    else throw new Error(`line ${index + 1}: expected [section] or key = value, got "${line}"`);
  });
  return sections;
}

function readConfig(argv) {
  let cli;
  try {
    cli = parseArgs({
      args: argv,
      options: {
        config: { type: 'string', short: 'c' },
        listen: { type: 'string' },
        'version-script': { type: 'string' },
        'install-script': { type: 'string' },
        'restart-script': { type: 'string' },
        'ready-script': { type: 'string' },
        'grace-period': { type: 'string' },
        'proto-root': { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (error) {
    return { problems: [`${error.message}\n${USAGE}`] };
  }
  if (cli.help) {
    console.log(USAGE);
    process.exit(0);
  }
  let ini = {};
  if (cli.config !== undefined) {
    try {
      ini = readIni(cli.config);
    } catch (error) {
      return { problems: [`config: cannot read ${cli.config}: ${error.message}`] };
    }
  }
  const problems = [];
  // An empty value means unset, as in upparat's config.
  const hooks = ini.hooks ?? {};
  const own = ini.hookserver ?? {};
  const get = (section, key) => (section[key] ?? '').trim() || undefined;
  for (const key of Object.keys(own)) {
    if (!HOOKSERVER_KEYS.includes(key)) {
      problems.push(`config: [hookserver] has unknown key ${key}; known: ${HOOKSERVER_KEYS}`);
    }
  }

  const seconds = (where, text, fallback) => {
    if (text === undefined) return fallback;
    if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
    problems.push(`config: ${where} must be seconds >= 0, got "${text}"`);
    return fallback;
  };
  const graceSeconds =
    cli['grace-period'] === undefined
      ? seconds('[hookserver] cancel_grace_period', get(own, 'cancel_grace_period'), 10)
      : seconds('--grace-period', cli['grace-period'], 10);

  let socketMode = 0o660;
  const modeText = get(own, 'socket_mode');
  if (modeText !== undefined) {
    const match = /^(?:0o)?([0-7]{3,4})$/.exec(modeText);
    if (match && (parseInt(match[1], 8) & ~0o660) === 0) socketMode = parseInt(match[1], 8);
    else
      problems.push(`config: [hookserver] socket_mode must be 0660 or tighter, got "${modeText}"`);
  }

  const level = (cli['log-level'] ?? get(own, 'log_level') ?? 'INFO').toUpperCase();
  if (!(level in LOG_LEVELS)) {
    problems.push(`config: log_level must be one of ${Object.keys(LOG_LEVELS)}, got "${level}"`);
  }

  const listen = cli.listen ?? get(own, 'listen') ?? get(hooks, 'endpoint') ?? DEFAULT_ENDPOINT;
  const socketPath = unixSocketPath(listen);
  if (socketPath === null) {
    problems.push(
      `config: listen must be unix:///absolute/path (this example serves unix sockets only), got "${listen}"`,
    );
  }

  const scriptPath = get(own, 'script_path') ?? DEFAULT_SCRIPT_PATH;
  const scripts = new Map(); // hook name -> absolute path of its script
  for (const name of Object.keys(HOOKS)) {
    const fromCli = cli[`${name}-script`];
    const value = fromCli ?? get(hooks, name);
    if (value === undefined) continue;
    const where =
      fromCli === undefined ? `[hooks] ${name} = ${value}` : `--${name}-script ${value}`;
    const script = locate(value, scriptPath);
    const problem = scriptProblem(script);
    if (problem) problems.push(`${where}: ${problem}`);
    scripts.set(name, script);
  }
  if (get(hooks, 'download') !== undefined) {
    // Ignoring it would let downloads start that the script is there to hold back.
    problems.push(
      '[hooks] download: this example server does not implement the download hook; ' +
        'remove the key or use upparat-hookserver',
    );
  }

  return {
    problems,
    scripts,
    socketPath,
    socketMode,
    scriptPath,
    graceMs: graceSeconds * 1000,
    defaultRetryAfter: seconds(
      '[hookserver] default_retry_after',
      get(own, 'default_retry_after'),
      null,
    ),
    logLevel: LOG_LEVELS[level] ?? LOG_LEVELS.INFO,
    // The contract lives in the repository's proto/ directory, two levels up from here.
    protoRoot: path.resolve(cli['proto-root'] ?? path.join(__dirname, '..', '..', 'proto')),
  };
}

// unix:///abs, unix:/abs or unix:relative -> the socket's path; null for anything else.
function unixSocketPath(listen) {
  const match = /^unix:(?:\/\/(?=\/))?(.+)$/.exec(listen);
  return match && !match[1].startsWith('//') ? path.resolve(match[1]) : null;
}

// A bare name is looked up on script_path, as 1.12's Popen looked it up on PATH.
function locate(value, scriptPath) {
  if (value.includes('/')) return path.resolve(value);
  for (const dir of scriptPath.split(':')) {
    const candidate = path.join(dir, value);
    if (scriptProblem(candidate) === null) return candidate;
  }
  return value;
}

function scriptProblem(script) {
  let stat;
  try {
    stat = fs.statSync(script);
  } catch {
    return 'no such file; fix the path or remove the key';
  }
  if (!stat.isFile()) return 'not a regular file';
  try {
    fs.accessSync(script, fs.constants.X_OK);
  } catch {
    return `not executable (chmod +x ${script})`;
  }
  return null;
}

// --- one run of one script ---------------------------------------------------------

// Whether a signal reached any process of group `pgid`; false once the group is empty.
function signalGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (error) {
    if (error.code === 'ESRCH') return false;
    throw error;
  }
}

// Whether process group `pgid` has a live member. Signal 0 would count zombies too: an
// orphan stays one until its new parent (PID 1) reaps it, which may take a while.
function groupAlive(pgid) {
  let entries;
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return signalGroup(pgid, 0); // no /proc: the best guess there is
  }
  for (const entry of entries) {
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // not a process, or gone meanwhile
    }
    // "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(pgrp) === pgid && state !== 'Z' && state !== 'X') return true;
  }
  return false;
}

// Ends process group `pgid`: SIGTERM now, SIGKILL to whatever is left after the grace
// period. Resolves to whether there was anyone to end. It stops signalling once the group
// is empty: Linux does not reuse a pid while a group of that id has members, but may after.
async function endGroup(pgid, graceMs) {
  if (!groupAlive(pgid)) return false;
  signalGroup(pgid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (groupAlive(pgid)) {
    if (Date.now() >= deadline) {
      signalGroup(pgid, 'SIGKILL');
      break;
    }
    await sleep(20);
  }
  return true;
}

// The kept tail of stderr as text, not starting in the middle of a UTF-8 character.
function tailText(buffer) {
  let start = 0;
  while (start < buffer.length && (buffer[start] & 0xc0) === 0x80) start += 1;
  return buffer.subarray(start).toString('utf8');
}

// One run of one hook script, in a process group of its own: `detached` makes the script a
// session and group leader (setsid), so one kill(-pgid) reaches everything it started.
// `start()` resolves once the script and everything it left in its group are gone, with
// { exit: {code, signal} | notStarted: message, stopped, lastLines, stderrTail }.
class ScriptRun {
  constructor(argv, env, graceMs, onLine) {
    Object.assign(this, { argv, env, graceMs, onLine });
    this.stopped = null; // why the server ended the script: 'cancelled', 'deadline', 'shutdown'
    this.ending = null; // the endGroup() promise, once started
    this.exited = false;
    this.startedAt = Date.now();
  }

  // SIGTERM, then SIGKILL after the grace period, to the whole group. The first cause wins;
  // a script that has exited by itself keeps its result (grpc-js reports 'cancelled' after
  // every call, even a completed one).
  stop(cause) {
    if (this.exited || this.stopped || this.child?.pid === undefined) return;
    this.stopped = cause;
    log(
      'INFO',
      `${path.basename(this.argv[0])}: ${cause}, killing process group ${this.child.pid}`,
    );
    this.ending = endGroup(this.child.pid, this.graceMs);
  }

  async start() {
    let child;
    try {
      child = spawn(this.argv[0], this.argv.slice(1), {
        detached: true,
        cwd: '/',
        env: this.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (error) {
      return this.finish({ notStarted: error.message });
    }
    this.child = child;

    const lastLines = []; // the last two non-empty stdout lines
    readline.createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (raw) => {
      // readline also splits at a lone \r: a progress bar redrawn in place gives lines.
      const line = raw.trim().slice(0, MAX_LINE_CHARS);
      if (line === '') return;
      lastLines.push(line);
      if (lastLines.length > 2) lastLines.shift();
      this.onLine?.(line);
    });
    let stderrTail = Buffer.alloc(0);
    child.stderr.on('data', (chunk) => {
      stderrTail = Buffer.concat([stderrTail, chunk]);
      stderrTail = stderrTail.subarray(Math.max(0, stderrTail.length - STDERR_TAIL_BYTES));
    });
    const closed = new Promise((resolve) => child.once('close', resolve));

    const exit = await new Promise((resolve) => {
      child.once('error', (error) => resolve({ notStarted: error.message }));
      child.once('exit', (code, signal) => resolve({ exit: { code, signal } }));
    });
    this.exited = true;
    if (exit.notStarted) return this.finish(exit);

    // No orphans: whatever the script left running in its group goes with it.
    this.ending ??= endGroup(child.pid, this.graceMs).then((leftovers) => {
      if (leftovers) log('WARNING', `${this.argv[0]} left processes in its group; killed them`);
    });
    await this.ending;
    // Everything in the group is gone; a process that left the group may still hold the
    // pipes open. Read for one more second at most.
    if ((await Promise.race([closed.then(() => true), sleep(1000)])) !== true) {
      child.stdout.destroy();
      child.stderr.destroy();
    }
    return this.finish({ ...exit, lastLines, stderrTail: tailText(stderrTail) });
  }

  finish(outcome) {
    this.exited = true;
    return { lastLines: [], stderrTail: '', ...outcome, stopped: this.stopped };
  }
}

// --- from a finished script to a HookResult ----------------------------------------

function failure(reason, message, detail = '') {
  return { outcome: 'OUTCOME_FAILURE', reason, message, detail };
}

function duration(seconds) {
  return { seconds: Math.floor(seconds), nanos: Math.round((seconds % 1) * 1e9) };
}

// How a script that ended by itself maps onto HookResult: exit 0 is SUCCESS, 3 is
// RETRY_LATER, anything else FAILURE (upparat 1.12's exit codes).
function hookResult(hook, script, outcome, defaultRetryAfter) {
  const last = outcome.lastLines.at(-1) ?? '';
  if (outcome.notStarted) {
    return failure(
      'HOOK_NOT_STARTED',
      `${hook} hook ${script} could not start: ${outcome.notStarted}`,
    );
  }
  const { code, signal } = outcome.exit;
  if (signal) {
    return failure(
      'HOOK_KILLED_BY_SIGNAL',
      `${hook} hook ${script} was killed by ${signal}`,
      outcome.stderrTail,
    );
  }
  if (code === 0) return { outcome: 'OUTCOME_SUCCESS', message: last };
  if (code === RETRY_EXIT_CODE) {
    let message = last;
    let hint = defaultRetryAfter;
    const directive = RETRY_AFTER.exec(last);
    if (directive) {
      message = outcome.lastLines.length > 1 ? outcome.lastLines[0] : '';
      const seconds = Number(directive[1]);
      if (Number.isFinite(seconds) && seconds >= 0) hint = seconds;
      else log('WARNING', `${hook} hook ${script}: ignoring "${last}" (seconds >= 0 expected)`);
    }
    // retry_after unset: the daemon uses its configured retry interval.
    return {
      outcome: 'OUTCOME_RETRY_LATER',
      message,
      retry_after: hint === null ? null : duration(hint),
    };
  }
  const message = `${hook} hook ${script} exited with status ${code}`;
  return failure('HOOK_EXIT_NONZERO', last ? `${message}: ${last}` : message, outcome.stderrTail);
}

function describe(outcome) {
  if (outcome.notStarted) return `not started (${outcome.notStarted})`;
  const { code, signal } = outcome.exit;
  const ending = signal ? `killed by ${signal}` : `exit status ${code}`;
  return outcome.stopped ? `stopped (${outcome.stopped}; ${ending})` : ending;
}

// --- the services ------------------------------------------------------------------

// Starts scripts for calls and keeps at most one run per hook.
class Runner {
  constructor(config) {
    this.config = config;
    this.runs = new Map(); // hook name -> { run, jobId, attempt }
    this.stopping = false;
  }

  // Runs `hook`'s script for this call and returns a promise of its outcome; or refuses the
  // call with refuse(code, details) and returns undefined.
  begin(hook, call, refuse, { extraArgs = [], extraEnv = {}, onLine } = {}) {
    const job = call.request.context ?? { job_id: '', meta: '', attempt: 0, force: false };
    if ([job.job_id, job.meta, ...extraArgs].some((text) => text.includes('\0'))) {
      return refuse(
        grpc.status.INVALID_ARGUMENT,
        `${hook}: job id, meta and file path must not contain NUL`,
      );
    }
    if (this.stopping)
      return refuse(grpc.status.UNAVAILABLE, 'hook server is stopping; call again');
    const busy = this.runs.get(hook);
    if (busy) {
      const age = Math.round((Date.now() - busy.run.startedAt) / 1000);
      return refuse(
        grpc.status.ABORTED,
        `a ${hook} call is already running (job ${busy.jobId}, attempt ${busy.attempt}, ` +
          `for ${age} s); call again when it has ended`,
      );
    }
    const script = this.config.scripts.get(hook);
    const elapsed = String(Math.max(0, Math.floor(Number(job.elapsed?.seconds ?? 0))));
    // upparat 1.12 (hooks.py): script, seconds since the first call, retries so far, meta,
    // then the hook's own arguments. The environment is built from scratch: the server's
    // own (credentials, sockets) is none of the script's business.
    const argv = [script, elapsed, String(Math.max(0, job.attempt - 1)), job.meta, ...extraArgs];
    const env = {
      PATH: this.config.scriptPath,
      LANG: 'C.UTF-8',
      HOME,
      UPPARAT_HOOK: hook,
      UPPARAT_JOB_ID: job.job_id,
      UPPARAT_ATTEMPT: String(job.attempt),
      UPPARAT_FORCE: job.force ? '1' : '0',
      UPPARAT_META: job.meta,
      UPPARAT_ELAPSED: elapsed,
      ...extraEnv,
    };
    const run = new ScriptRun(argv, env, this.config.graceMs, onLine);
    // The daemon cancelled, went away, or the deadline passed: the call is over, and
    // nothing the script does can be answered any more. Kill it.
    call.on('cancelled', () => {
      const late = call.getDeadline() !== Infinity && Date.now() >= Number(call.getDeadline());
      run.stop(late ? 'deadline' : 'cancelled');
    });
    const done = run.start().then((outcome) => {
      this.runs.delete(hook);
      log(
        'INFO',
        `${hook} job=${job.job_id} attempt=${job.attempt}: ${describe(outcome)} ` +
          `after ${((Date.now() - run.startedAt) / 1000).toFixed(1)} s`,
      );
      return outcome;
    });
    this.runs.set(hook, { run, done, jobId: job.job_id, attempt: job.attempt });
    return done;
  }

  // Refuses new calls and stops every running script; resolves when they are gone.
  stopAll() {
    this.stopping = true;
    const runs = [...this.runs.values()];
    for (const { run } of runs) run.stop('shutdown');
    return Promise.all(runs.map(({ done }) => done));
  }

  // A finished run's HookResult; or, for a run the server stopped, the status to end the
  // call with (null when the call has already ended: cancelled or past its deadline).
  result(hook, outcome) {
    if (outcome.stopped === 'shutdown') {
      // Not the script's fault: the daemon waits and calls again.
      return {
        status: { code: grpc.status.UNAVAILABLE, details: 'hook server is stopping; call again' },
      };
    }
    if (outcome.stopped) return { status: null };
    const { scripts, defaultRetryAfter } = this.config;
    return { result: hookResult(hook, scripts.get(hook), outcome, defaultRetryAfter) };
  }
}

// A unary hook: one script run, one response carrying the HookResult.
// `cleanup` runs once the call is over, answered or not (refused, cancelled, stopped).
function unaryHook(runner, hook, toResponse, extraArgs = () => [], options = {}) {
  const { extraEnv = {}, cleanup = () => {} } = options;
  return (call, callback) => {
    const refuse = (code, details) => callback({ code, details });
    const running = runner.begin(hook, call, refuse, { extraArgs: extraArgs(call.request), extraEnv });
    if (!running) return cleanup();
    running.then((outcome) => {
      try {
        const { status, result } = runner.result(hook, outcome);
        if (result) callback(null, toResponse(result, outcome));
        else if (status) callback(status);
      } finally {
        cleanup();
      }
    });
  };
}

// The contract asks for progress "not more than a few times a second": at most one message
// per PROGRESS_INTERVAL_MS; a line arriving sooner replaces the one waiting to be sent.
function throttled(send) {
  let lastSent = -Infinity;
  let pending = null;
  let timer = null;
  const flush = () => {
    clearTimeout(timer);
    timer = null;
    if (pending !== null) send(pending);
    pending = null;
    lastSent = performance.now();
  };
  return {
    push(line) {
      pending = line;
      const wait = lastSent + PROGRESS_INTERVAL_MS - performance.now();
      if (wait <= 0) flush();
      else timer ??= setTimeout(flush, wait);
    },
    flush,
  };
}

// Install, a server stream: progress while the script runs, then exactly one result.
function installHook(runner) {
  return (call) => {
    const refuse = (code, details) => call.emit('error', { code, details });
    const file = call.request.file_path;
    if (!file) return refuse(grpc.status.INVALID_ARGUMENT, 'install: file_path is empty');
    const progress = throttled((line) => {
      const percent = PERCENT.exec(line);
      const known = percent && Number(percent[1]) <= 100;
      if (!call.cancelled)
        call.write({ progress: { line, percent: known ? Number(percent[1]) : null } });
    });
    const running = runner.begin('install', call, refuse, {
      extraArgs: [file],
      extraEnv: { UPPARAT_FILE: file },
      onLine: progress.push,
    });
    running?.then((outcome) => {
      progress.flush();
      const { status, result } = runner.result('install', outcome);
      if (status) return refuse(status.code, status.details);
      if (!result || call.cancelled) return;
      call.write({ result });
      call.end();
    });
  };
}

// The version hook's $UPPARAT_ATTRIBUTES, as upparat-hookserver has it: an empty file of
// mode 0600 in a new directory of mode 0700, to which the script may append key=value lines;
// read (whole lines of the first 16 KiB, not following a symlink, not blocking on a FIFO)
// once the script has ended, then removed. Which attributes the $package shadow can carry
// is the daemon's rule, not the server's.
const ATTRIBUTES_MAX_BYTES = 16 * 1024;

function makeAttributesFile() {
  try {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'upparat-version-'));
    const file = path.join(dir, 'attributes');
    fs.closeSync(fs.openSync(file, 'wx', 0o600));
    return file;
  } catch (e) {
    log('WARNING', `version: cannot make the attributes file (${e.message}); running without it`);
    return null;
  }
}

function readAttributes(file, jobId) {
  const warn = (problem) => log('WARNING', `version job=${jobId}: UPPARAT_ATTRIBUTES ${problem}`);
  const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
  let fd;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (e) {
    if (e.code !== 'ENOENT') warn(`cannot be read (${e.code}); no attributes`);
    return {};
  }
  let data;
  try {
    if (!fs.fstatSync(fd).isFile()) {
      warn('is no longer a regular file; no attributes');
      return {};
    }
    const buffer = Buffer.alloc(ATTRIBUTES_MAX_BYTES + 1);
    data = buffer.subarray(0, fs.readSync(fd, buffer, 0, buffer.length, 0));
  } finally {
    fs.closeSync(fd);
  }
  if (data.length > ATTRIBUTES_MAX_BYTES) {
    const cut = data.subarray(0, ATTRIBUTES_MAX_BYTES);
    data = cut.subarray(0, Math.max(0, cut.lastIndexOf(10)));
    warn(`is over ${ATTRIBUTES_MAX_BYTES} bytes; only its first lines were read`);
  }
  const found = {};
  data
    .toString('utf8')
    .split('\n')
    .forEach((raw, index) => {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (!line.trim()) return;
      const equals = line.indexOf('=');
      const key = equals < 0 ? '' : line.slice(0, equals).trim();
      if (!key) return warn(`line ${index + 1} is not key=value: ${JSON.stringify(line.slice(0, 80))}`);
      found[key] = line.slice(equals + 1);
    });
  return found;
}

function versionHook(runner) {
  const { scripts } = runner.config;
  return (call, callback) => {
    const file = makeAttributesFile();
    const jobId = call.request.context?.job_id ?? '';
    const toResponse = (result, outcome) => {
      // SUCCESS must carry a version: the last non-empty stdout line, as in 1.12.
      if (result.outcome !== 'OUTCOME_SUCCESS') return { version: '', result };
      if (!result.message) {
        const message = `version hook ${scripts.get('version')} exited 0 but printed no version on stdout`;
        return { version: '', result: failure('EMPTY_VERSION', message, outcome.stderrTail) };
      }
      const attributes = file ? readAttributes(file, jobId) : {};
      return { version: result.message, attributes, result: { outcome: 'OUTCOME_SUCCESS' } };
    };
    unaryHook(runner, 'version', toResponse, () => [], {
      extraEnv: file ? { UPPARAT_ATTRIBUTES: file } : {},
      cleanup: () => file && fs.rmSync(path.dirname(file), { recursive: true, force: true }),
    })(call, callback);
  };
}

function hookService(runner) {
  const { scripts } = runner.config;
  const handlers = {
    GetVersion: versionHook(runner),
    Install: installHook(runner),
    // upparat 1.12 passed the force flag as str(True), or "" when false.
    Restart: unaryHook(
      runner,
      'restart',
      (result) => ({ result }),
      (request) => [request.context?.force ? 'True' : ''],
    ),
    CheckReady: unaryHook(runner, 'ready', (result) => ({ result })),
  };
  // Only hooks with a script are served; grpc-js answers UNIMPLEMENTED for the others.
  const served = {};
  for (const [name, { rpc }] of Object.entries(HOOKS)) {
    if (scripts.has(name)) served[rpc] = handlers[rpc];
  }
  return served;
}

function identityService(config) {
  const manifest = { runtime: `node ${process.version}` };
  for (const [name, script] of config.scripts) manifest[`script.${name}`] = script;
  const info = {
    server_name: SERVER_NAME,
    server_version: SERVER_VERSION,
    api_versions: ['v1'],
    hooks: [...config.scripts.keys()].map((name) => HOOKS[name].hook),
    manifest,
  };
  return { GetInfo: (call, callback) => callback(null, info) };
}

// --- listening and stopping --------------------------------------------------------

function loadContract(protoRoot) {
  const definition = protoLoader.loadSync('upparat/hooks/v1/hooks.proto', {
    includeDirs: [protoRoot],
    keepCase: true, // field names as written in hooks.proto: file_path, retry_after
    enums: String, // enum values by name: 'OUTCOME_SUCCESS'
    longs: Number,
    defaults: true, // unset fields read as their defaults: '', 0, false
  });
  return grpc.loadPackageDefinition(definition).upparat.hooks.v1;
}

// A socket file nobody listens on is what a crashed server leaves: remove it. Anything
// else at that path is not ours to delete.
async function removeStaleSocket(socketPath) {
  let stat;
  try {
    stat = fs.lstatSync(socketPath);
  } catch {
    return null; // nothing there
  }
  if (!stat.isSocket()) return `${socketPath} exists and is not a socket; not deleting it`;
  const listening = await new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (listening) return `another process is listening on ${socketPath}`;
  log('INFO', `removing stale socket ${socketPath}`);
  fs.unlinkSync(socketPath);
  return null;
}

async function main() {
  const config = readConfig(process.argv.slice(2));
  for (const problem of config.problems) console.error(`${SERVER_NAME}: ${problem}`);
  if (config.problems.length > 0) process.exit(2);
  logLevel = config.logLevel;

  const startupError = (message) => {
    log('ERROR', message);
    process.exit(2);
  };
  let v1;
  try {
    v1 = loadContract(config.protoRoot);
  } catch (error) {
    startupError(`cannot load hooks.proto from --proto-root ${config.protoRoot}: ${error.message}`);
  }
  const runner = new Runner(config);
  const health = new HealthImplementation({ '': 'SERVING' });
  const server = new grpc.Server({
    'grpc.max_receive_message_length': 1024 * 1024,
    'grpc.max_send_message_length': 1024 * 1024,
  });
  server.addService(v1.IdentityService.service, identityService(config));
  server.addService(v1.HookService.service, hookService(runner));
  health.addToServer(server);

  const { socketPath, socketMode } = config;
  if (!fs.existsSync(path.dirname(socketPath))) {
    startupError(
      `cannot listen on unix://${socketPath}: directory ${path.dirname(socketPath)} does not exist`,
    );
  }
  const problem = await removeStaleSocket(socketPath);
  if (problem) startupError(`cannot listen on unix://${socketPath}: ${problem}`);
  // The umask makes the socket file start with socket_mode (0660), never more open; the
  // chmod after bind states the mode explicitly.
  const oldUmask = process.umask(0o777 & ~socketMode);
  try {
    await promisify(server.bindAsync.bind(server))(
      `unix:${socketPath}`,
      grpc.ServerCredentials.createInsecure(),
    );
  } catch (error) {
    startupError(`cannot listen on unix://${socketPath}: ${error.message}`);
  } finally {
    process.umask(oldUmask);
  }
  fs.chmodSync(socketPath, socketMode);
  const socketInode = fs.lstatSync(socketPath).ino;
  for (const service of SERVICES) health.setStatus(service, 'SERVING');
  log(
    'INFO',
    `listening on unix://${socketPath}; hooks: ${[...config.scripts.keys()].join(', ') || 'none'}`,
  );

  // SIGTERM (systemd stop), SIGINT (Ctrl-C), SIGHUP: refuse new calls, kill every running
  // script (calls end UNAVAILABLE: the daemon calls again once a server is back), then exit.
  const stop = async (signal) => {
    if (runner.stopping) return; // a second signal while stopping
    log('INFO', `${signal}: stopping; killing running scripts`);
    const scriptsGone = runner.stopAll();
    for (const service of ['', ...SERVICES]) health.setStatus(service, 'NOT_SERVING');
    await Promise.race([scriptsGone, sleep(config.graceMs + 2000)]);
    await Promise.race([promisify(server.tryShutdown.bind(server))(), sleep(1000)]);
    server.forceShutdown();
    // Only our own socket file: another server may have taken the path meanwhile.
    if (fs.lstatSync(socketPath, { throwIfNoEntry: false })?.ino === socketInode)
      fs.unlinkSync(socketPath);
    log('INFO', 'stopped');
    process.exit(0);
  };
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => stop(signal));
}

main();
