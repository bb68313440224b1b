# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_sentinel_global_optspecs
    string join \n repo= token= api-url= server= auth-token= auth-token-file= ca-cert= client-cert= client-key= redis-url= database-url= etcd-endpoints= backend= worker-id= node-id= data-dir= trust= json v/verbose q/quiet h/help V/version
end

function __fish_sentinel_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_sentinel_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_sentinel_using_subcommand
    set -l cmd (__fish_sentinel_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c sentinel -n "__fish_sentinel_needs_command" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_needs_command" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_needs_command" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_needs_command" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_needs_command" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_needs_command" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_needs_command" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_needs_command" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_needs_command" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_needs_command" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_needs_command" -s V -l version -d 'Print version'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "claim" -d 'Claim a lock: a GitHub issue number, or a name on the other backends'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "release" -d 'Release a lock held by this worker'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "status" -d 'Show who holds a lock, or every held lock'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "heartbeat" -d 'Renew a held lock: once, or as a sidecar until stopped'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "run" -d 'Claim a lock, run a command while renewing it, release it when the command ends'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "steal-stale" -d 'Take over a stale lock, or release every stale lock (--all)'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "elect" -d 'Campaign in an election and run a command while leader: the leader is the holder of the election\'s lock'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "leader" -d 'Show an election\'s leader, or every change of leader (--watch)'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "barrier" -d 'Wait until --count participants have arrived at a barrier, then all go on'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "watch" -d 'Print one JSON line per event of the locks (acquired, released, expired, queued), on the coordinator or the local backend, until stopped'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "kv" -d 'Read and write the coordinator\'s key-value store (--server): JSON values under keys, each write numbered by the store\'s revision'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "metrics" -d 'Show lock metrics: this host\'s counters, or with --repo-wide the repository\'s history'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "serve" -d 'Run a coordinator node: named locks replicated with Raft, served over HTTP'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "cluster" -d 'Inspect the coordinator cluster given with --server'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "doctor" -d 'Check the options and the backend they choose: which one and why, where the GitHub token comes from, and whether it can be used (exit 0 usable, else the failure\'s exit code)'
complete -c sentinel -n "__fish_sentinel_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l label -d 'With --next: the issue must have this label (repeatable: all of them)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l exclude-label -d 'With --next: the issue must not have this label (repeatable: none of them)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l fail-label -d 'With --next: the label that marks an issue whose work failed: `run --next` puts it on when CMD exits non-zero, and --next skips issues that carry it; \'\' for none [default: sentinel:failed]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l strategy -d 'What to do when the lock is held' -r -f -a "retry\t'Wait and retry with exponential backoff while the lock is held (default)'
fail-fast\t'Give up at once when the lock is held (exit 3)'
steal-stale\t'Take over a lock whose heartbeat is older than its TTL; otherwise retry'
force\t'Take over unconditionally, even a live lock. Loud, for humans fixing a mess'"
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l wait -d 'The whole time to wait for a held lock (as flock -w), retrying with the backoff until then instead of --max-retries; 0 tries once' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l max-retries -d 'Retries of the retry and steal-stale strategies' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l conflict-exit-code -d 'Exit code when the lock is held or the queue is empty (as flock -E), to tell it from the failures of `run`\'s command; 1 to 255' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l initial-backoff -d 'First pause between retries (doubles each time)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l max-backoff -d 'Longest pause between retries' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l ttl -d 'Lease: the lock is stale when its last heartbeat is older than this' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l limit -d 'A semaphore: at most N permits held at once; every claim of the name gives the same N (coordinator, local, Redis, PostgreSQL)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l permits -d 'With --limit: the permits this claim takes [default: 1]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l task-info -d 'Task info recorded with the lock, as JSON or @FILE (a file holding the JSON): {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l complexity -d 'Task complexity, e.g. 5 (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l estimate -d 'Estimated duration, e.g. 45min (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l task-type -d 'Task type, e.g. bug-fix (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l priority -d 'Task priority, e.g. high (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l next -d 'Claim the oldest open issue with no lock (github backend); exit 3 when none is free'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l retry-failed -d 'With --next: take issues that carry --fail-label too'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -s n -l nonblock -d 'Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l shared -d 'A shared (read) hold: held with other shared holds, never with an exclusive one; it waits behind a waiting exclusive claim (coordinator, local, Redis, PostgreSQL)'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand claim" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l force -d 'Release even if another worker holds it'
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand release" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l since -d 'GitHub: how far back to look for lock activity when listing every lock' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l interval -d 'Renew every this long [default: 30s, or a third of the lock\'s TTL if shorter]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l once -d 'Renew once and exit (0 renewed, 4 lost)'
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l release-on-exit -d 'Release the lock when stopped by SIGINT or SIGTERM'
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand heartbeat" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l fail-label -d 'With --next: the label that marks an issue whose work failed: `run --next` puts it on when CMD exits non-zero, and --next skips issues that carry it; \'\' for none [default: sentinel:failed]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l strategy -d 'What to do when the lock is held' -r -f -a "retry\t'Wait and retry with exponential backoff while the lock is held (default)'
fail-fast\t'Give up at once when the lock is held (exit 3)'
steal-stale\t'Take over a lock whose heartbeat is older than its TTL; otherwise retry'
force\t'Take over unconditionally, even a live lock. Loud, for humans fixing a mess'"
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l wait -d 'The whole time to wait for a held lock (as flock -w), retrying with the backoff until then instead of --max-retries; 0 tries once' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l max-retries -d 'Retries of the retry and steal-stale strategies' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l conflict-exit-code -d 'Exit code when the lock is held or the queue is empty (as flock -E), to tell it from the failures of `run`\'s command; 1 to 255' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l initial-backoff -d 'First pause between retries (doubles each time)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l max-backoff -d 'Longest pause between retries' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l ttl -d 'Lease: the lock is stale when its last heartbeat is older than this' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l limit -d 'A semaphore: at most N permits held at once; every claim of the name gives the same N (coordinator, local, Redis, PostgreSQL)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l permits -d 'With --limit: the permits this claim takes [default: 1]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l task-info -d 'Task info recorded with the lock, as JSON or @FILE (a file holding the JSON): {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l complexity -d 'Task complexity, e.g. 5 (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l estimate -d 'Estimated duration, e.g. 45min (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l task-type -d 'Task type, e.g. bug-fix (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l priority -d 'Task priority, e.g. high (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l interval -d 'Renew every this long [default: 30s, or a third of --ttl if shorter]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l kill-grace -d 'If the lock is lost: how long after SIGTERM the command gets before SIGKILL' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l also -d 'Hold this lock too while CMD runs (repeatable): all are claimed in name order, so runs that share locks never deadlock, and kept together (on the coordinator by one session)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l label -d 'With --next: the issue must have this label (repeatable: all of them)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l exclude-label -d 'With --next: the issue must not have this label (repeatable: none of them)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l retry-failed -d 'With --next: take issues that carry --fail-label too'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -s n -l nonblock -d 'Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l shared -d 'A shared (read) hold: held with other shared holds, never with an exclusive one; it waits behind a waiting exclusive claim (coordinator, local, Redis, PostgreSQL)'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l next -d 'Claim the oldest open issue with no lock (github backend); exit 3 when none is free'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l since -d 'With --all on GitHub: how far back to look for lock activity (older locks are not found)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l ttl -d 'Lease of the lock taken over' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l task-info -d 'Task info recorded with the lock, as JSON or @FILE (a file holding the JSON): {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l complexity -d 'Task complexity, e.g. 5 (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l estimate -d 'Estimated duration, e.g. 45min (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l task-type -d 'Task type, e.g. bug-fix (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l priority -d 'Task priority, e.g. high (wins over --task-info\'s)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l all -d 'Release every stale lock instead (a janitor for a scheduled job); live locks are kept'
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l dry-run -d 'With --all: list what would be released and change nothing'
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand steal-stale" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l value -d 'What the leader publishes while it leads (its address, say): `sentinel leader` shows it' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l ttl -d 'The leader\'s lease: a leader that stops renewing (killed, cut off) is replaced this long after its last renewal' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l wait -d 'Give up the campaign after this long (exit 3) [default: campaign until elected]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l interval -d 'Renew every this long [default: a third of --ttl]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l kill-grace -d 'If leadership is lost: how long after SIGTERM the command gets before SIGKILL' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand elect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l every -d 'With --watch: how often to look' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l watch -d 'Print one JSON line per change of leader (the current one first), until stopped'
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand leader" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l count -d 'How many participants open it; every participant gives the same' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l timeout -d 'Give up after this long (exit 3), leaving the barrier [default: wait until it opens]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand barrier" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l prefix -d 'Watch every lock whose name starts with P ("" for all)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l since-revision -d 'Start after this revision (the last one a previous watch printed) instead of now' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -f -a "get" -d 'Print a key\'s value: a string as it is, any other JSON value on one line; exit 6 when the key does not exist'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -f -a "put" -d 'Write a key\'s value (JSON, or else text) and print the revision of the write'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -f -a "del" -d 'Delete a key; exit 0 whether or not it existed'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -f -a "list" -d 'Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -f -a "watch" -d 'Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and not __fish_seen_subcommand_from get put del list watch help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l if-revision -d 'Write only if the key\'s revision (its mod_revision) is N; 0: only if the key does not exist (exit 3 otherwise)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l merge -d 'How VALUE combines with the stored value' -r -f -a "replace\t'VALUE replaces the stored value'
union\t'Arrays as sets: the stored array gains VALUE\'s elements it lacks'
deep\t'Objects merged field by field, recursively; VALUE\'s fields win'
max\t'The larger number'
min\t'The smaller number'
add\t'The sum: a counter'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l ttl -d 'The key ends this long after the write unless written again (1s to 365d); without it, the key stays until deleted' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from put" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l if-revision -d 'Delete only if the key\'s revision (its mod_revision) is N (exit 3 otherwise)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from del" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l since-revision -d 'Start after this revision (the last one a previous watch printed) instead of now' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print a key\'s value: a string as it is, any other JSON value on one line; exit 6 when the key does not exist'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from help" -f -a "put" -d 'Write a key\'s value (JSON, or else text) and print the revision of the write'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from help" -f -a "del" -d 'Delete a key; exit 0 whether or not it existed'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from help" -f -a "list" -d 'Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from help" -f -a "watch" -d 'Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get'
complete -c sentinel -n "__fish_sentinel_using_subcommand kv; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sentinel -n "__fish_sentinel_using_subcommand completions" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand completions" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand completions" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand completions" -s h -l help -d 'Print help'
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l format -d 'Output format; --json prints one JSON object instead' -r -f -a "table\t'A table for humans'
prometheus\t'Prometheus text exposition format, for node_exporter\'s textfile collector'"
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l since -d 'With --repo-wide: the window of lock activity to count' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l repo-wide -d 'GitHub: count the whole repository\'s grants, releases and take-overs from its lock comments'
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand metrics" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l listen -d 'Address to listen on for clients and peers: an IP address or a host name, with the port' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l id -d 'This node\'s id in the cluster (1 or more)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l peer -d 'A member of the cluster and the address peers reach it at; repeat for each member, this node included, with the same list on every node (the lowest id forms the cluster)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l peer-token -d 'Token the cluster\'s nodes authenticate each other\'s Raft messages with: required with other --peers, the same on every node, unlike the client token; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l peer-token-file -d 'Read the peer token from FILE (one trailing newline is ignored), so that it is on no command line' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l snapshot-every -d 'Snapshot the lock state every N log entries (and keep up to N entries after it), as etcd\'s --snapshot-count: fewer keep less log in memory and replay less at start, more write the (up to tens of MB) snapshot less often' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l kv-quota -d 'The key-value store\'s size quota in bytes: its keys, values (as JSON) and 128 bytes a key count against it, and a write past it is refused (429 kv_quota); at most 2 GiB; give every node the same' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l acl -d 'Client tokens and the lock-name prefixes each may act on, as JSON: {"tokens":[{"name":"ci","token":"…" or "sha256":"…","prefixes":["ci/"]}]}; the client token, if also given, is one more, named "default", allowed every lock' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l audit-log -d 'Append one JSON line per write a client asks of this node (time, token name, client address, operation, lock, result, fencing token) to FILE; writes are refused while it cannot be written' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l tls-cert -d 'Serve HTTPS to clients and peers with this PEM certificate chain (with --tls-key); the --peer addresses are then reached with https' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l tls-key -d 'PEM private key of --tls-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l tls-client-ca -d 'Require client certificates signed by the CAs in this PEM file (mTLS); peers present --tls-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l public-metrics -d 'Serve GET /metrics without a client token (it shows no lock names)'
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand serve" -s h -l help -d 'Print help'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -s h -l help -d 'Print help'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -f -a "status" -d 'Show the leader, term, members, commit and applied index and each follower\'s lag'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and not __fish_seen_subcommand_from status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show the leader, term, members, commit and applied index and each follower\'s lag'
complete -c sentinel -n "__fish_sentinel_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l repo -d 'GitHub repository OWNER/REPO whose issues are the locks' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l token -d 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l api-url -d 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l server -d '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l auth-token -d 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l auth-token-file -d 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l ca-cert -d 'PEM file of the certificate authorities to trust for https:// servers instead of the system\'s roots (`serve`: for its peers)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l client-cert -d 'PEM certificate to present to servers that require client certificates (with --client-key)' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l client-key -d 'PEM private key of --client-cert' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l redis-url -d 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l database-url -d 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l etcd-endpoints -d 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l backend -d 'Which backend holds the locks' -r -f -a "auto\t'server if --server is set, else github if --repo is set, else local'
github\t''
local\t''
server\t''
redis\t'named locks in Redis (--redis-url)'
postgres\t'named locks in PostgreSQL (--database-url)'
etcd\t'named locks in etcd (--etcd-endpoints)'"
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l worker-id -d 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l node-id -d 'Which machine the worker runs on [default: host name]' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l data-dir -d 'Where local locks and caches live [default: the user\'s data directory]' -r -F
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l trust -d 'GitHub logins whose lock comments are trusted besides owners, members and collaborators' -r
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -l json -d 'Print exactly one JSON object on stdout'
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -s v -l verbose -d 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -s q -l quiet -d 'Only errors on stderr'
complete -c sentinel -n "__fish_sentinel_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "claim" -d 'Claim a lock: a GitHub issue number, or a name on the other backends'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "release" -d 'Release a lock held by this worker'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "status" -d 'Show who holds a lock, or every held lock'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "heartbeat" -d 'Renew a held lock: once, or as a sidecar until stopped'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "run" -d 'Claim a lock, run a command while renewing it, release it when the command ends'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "steal-stale" -d 'Take over a stale lock, or release every stale lock (--all)'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "elect" -d 'Campaign in an election and run a command while leader: the leader is the holder of the election\'s lock'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "leader" -d 'Show an election\'s leader, or every change of leader (--watch)'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "barrier" -d 'Wait until --count participants have arrived at a barrier, then all go on'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "watch" -d 'Print one JSON line per event of the locks (acquired, released, expired, queued), on the coordinator or the local backend, until stopped'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "kv" -d 'Read and write the coordinator\'s key-value store (--server): JSON values under keys, each write numbered by the store\'s revision'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "completions" -d 'Print a shell completion script'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "metrics" -d 'Show lock metrics: this host\'s counters, or with --repo-wide the repository\'s history'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "serve" -d 'Run a coordinator node: named locks replicated with Raft, served over HTTP'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "cluster" -d 'Inspect the coordinator cluster given with --server'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "doctor" -d 'Check the options and the backend they choose: which one and why, where the GitHub token comes from, and whether it can be used (exit 0 usable, else the failure\'s exit code)'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and not __fish_seen_subcommand_from claim release status heartbeat run steal-stale elect leader barrier watch kv completions metrics serve cluster doctor help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and __fish_seen_subcommand_from kv" -f -a "get" -d 'Print a key\'s value: a string as it is, any other JSON value on one line; exit 6 when the key does not exist'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and __fish_seen_subcommand_from kv" -f -a "put" -d 'Write a key\'s value (JSON, or else text) and print the revision of the write'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and __fish_seen_subcommand_from kv" -f -a "del" -d 'Delete a key; exit 0 whether or not it existed'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and __fish_seen_subcommand_from kv" -f -a "list" -d 'Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and __fish_seen_subcommand_from kv" -f -a "watch" -d 'Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get'
complete -c sentinel -n "__fish_sentinel_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "status" -d 'Show the leader, term, members, commit and applied index and each follower\'s lag'
