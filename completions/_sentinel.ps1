
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'sentinel' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'sentinel'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'sentinel' {
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('claim', 'claim', [CompletionResultType]::ParameterValue, 'Claim a lock: a GitHub issue number, or a name on the other backends')
            [CompletionResult]::new('release', 'release', [CompletionResultType]::ParameterValue, 'Release a lock held by this worker')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show who holds a lock, or every held lock')
            [CompletionResult]::new('heartbeat', 'heartbeat', [CompletionResultType]::ParameterValue, 'Renew a held lock: once, or as a sidecar until stopped')
            [CompletionResult]::new('run', 'run', [CompletionResultType]::ParameterValue, 'Claim a lock, run a command while renewing it, release it when the command ends')
            [CompletionResult]::new('steal-stale', 'steal-stale', [CompletionResultType]::ParameterValue, 'Take over a stale lock, or release every stale lock (--all)')
            [CompletionResult]::new('elect', 'elect', [CompletionResultType]::ParameterValue, 'Campaign in an election and run a command while leader: the leader is the holder of the election''s lock')
            [CompletionResult]::new('leader', 'leader', [CompletionResultType]::ParameterValue, 'Show an election''s leader, or every change of leader (--watch)')
            [CompletionResult]::new('barrier', 'barrier', [CompletionResultType]::ParameterValue, 'Wait until --count participants have arrived at a barrier, then all go on')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print one JSON line per event of the locks (acquired, released, expired, queued), on the coordinator or the local backend, until stopped')
            [CompletionResult]::new('kv', 'kv', [CompletionResultType]::ParameterValue, 'Read and write the coordinator''s key-value store (--server): JSON values under keys, each write numbered by the store''s revision')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('metrics', 'metrics', [CompletionResultType]::ParameterValue, 'Show lock metrics: this host''s counters, or with --repo-wide the repository''s history')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run a coordinator node: named locks replicated with Raft, served over HTTP')
            [CompletionResult]::new('cluster', 'cluster', [CompletionResultType]::ParameterValue, 'Inspect the coordinator cluster given with --server')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check the options and the backend they choose: which one and why, where the GitHub token comes from, and whether it can be used (exit 0 usable, else the failure''s exit code)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'sentinel;claim' {
            [CompletionResult]::new('--label', '--label', [CompletionResultType]::ParameterName, 'With --next: the issue must have this label (repeatable: all of them)')
            [CompletionResult]::new('--exclude-label', '--exclude-label', [CompletionResultType]::ParameterName, 'With --next: the issue must not have this label (repeatable: none of them)')
            [CompletionResult]::new('--fail-label', '--fail-label', [CompletionResultType]::ParameterName, 'With --next: the label that marks an issue whose work failed: `run --next` puts it on when CMD exits non-zero, and --next skips issues that carry it; '''' for none [default: sentinel:failed]')
            [CompletionResult]::new('--strategy', '--strategy', [CompletionResultType]::ParameterName, 'What to do when the lock is held')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'The whole time to wait for a held lock (as flock -w), retrying with the backoff until then instead of --max-retries; 0 tries once')
            [CompletionResult]::new('--max-retries', '--max-retries', [CompletionResultType]::ParameterName, 'Retries of the retry and steal-stale strategies')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit code when the lock is held or the queue is empty (as flock -E), to tell it from the failures of `run`''s command; 1 to 255')
            [CompletionResult]::new('--initial-backoff', '--initial-backoff', [CompletionResultType]::ParameterName, 'First pause between retries (doubles each time)')
            [CompletionResult]::new('--max-backoff', '--max-backoff', [CompletionResultType]::ParameterName, 'Longest pause between retries')
            [CompletionResult]::new('--ttl', '--ttl', [CompletionResultType]::ParameterName, 'Lease: the lock is stale when its last heartbeat is older than this')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'A semaphore: at most N permits held at once; every claim of the name gives the same N (coordinator, local, Redis, PostgreSQL)')
            [CompletionResult]::new('--permits', '--permits', [CompletionResultType]::ParameterName, 'With --limit: the permits this claim takes [default: 1]')
            [CompletionResult]::new('--task-info', '--task-info', [CompletionResultType]::ParameterName, 'Task info recorded with the lock, as JSON or @FILE (a file holding the JSON): {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}')
            [CompletionResult]::new('--complexity', '--complexity', [CompletionResultType]::ParameterName, 'Task complexity, e.g. 5 (wins over --task-info''s)')
            [CompletionResult]::new('--estimate', '--estimate', [CompletionResultType]::ParameterName, 'Estimated duration, e.g. 45min (wins over --task-info''s)')
            [CompletionResult]::new('--task-type', '--task-type', [CompletionResultType]::ParameterName, 'Task type, e.g. bug-fix (wins over --task-info''s)')
            [CompletionResult]::new('--priority', '--priority', [CompletionResultType]::ParameterName, 'Task priority, e.g. high (wins over --task-info''s)')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--next', '--next', [CompletionResultType]::ParameterName, 'Claim the oldest open issue with no lock (github backend); exit 3 when none is free')
            [CompletionResult]::new('--retry-failed', '--retry-failed', [CompletionResultType]::ParameterName, 'With --next: take issues that carry --fail-label too')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast')
            [CompletionResult]::new('--nonblock', '--nonblock', [CompletionResultType]::ParameterName, 'Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast')
            [CompletionResult]::new('--shared', '--shared', [CompletionResultType]::ParameterName, 'A shared (read) hold: held with other shared holds, never with an exclusive one; it waits behind a waiting exclusive claim (coordinator, local, Redis, PostgreSQL)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;release' {
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Release even if another worker holds it')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;status' {
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'GitHub: how far back to look for lock activity when listing every lock')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;heartbeat' {
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Renew every this long [default: 30s, or a third of the lock''s TTL if shorter]')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--once', '--once', [CompletionResultType]::ParameterName, 'Renew once and exit (0 renewed, 4 lost)')
            [CompletionResult]::new('--release-on-exit', '--release-on-exit', [CompletionResultType]::ParameterName, 'Release the lock when stopped by SIGINT or SIGTERM')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;run' {
            [CompletionResult]::new('--fail-label', '--fail-label', [CompletionResultType]::ParameterName, 'With --next: the label that marks an issue whose work failed: `run --next` puts it on when CMD exits non-zero, and --next skips issues that carry it; '''' for none [default: sentinel:failed]')
            [CompletionResult]::new('--strategy', '--strategy', [CompletionResultType]::ParameterName, 'What to do when the lock is held')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'The whole time to wait for a held lock (as flock -w), retrying with the backoff until then instead of --max-retries; 0 tries once')
            [CompletionResult]::new('--max-retries', '--max-retries', [CompletionResultType]::ParameterName, 'Retries of the retry and steal-stale strategies')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit code when the lock is held or the queue is empty (as flock -E), to tell it from the failures of `run`''s command; 1 to 255')
            [CompletionResult]::new('--initial-backoff', '--initial-backoff', [CompletionResultType]::ParameterName, 'First pause between retries (doubles each time)')
            [CompletionResult]::new('--max-backoff', '--max-backoff', [CompletionResultType]::ParameterName, 'Longest pause between retries')
            [CompletionResult]::new('--ttl', '--ttl', [CompletionResultType]::ParameterName, 'Lease: the lock is stale when its last heartbeat is older than this')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'A semaphore: at most N permits held at once; every claim of the name gives the same N (coordinator, local, Redis, PostgreSQL)')
            [CompletionResult]::new('--permits', '--permits', [CompletionResultType]::ParameterName, 'With --limit: the permits this claim takes [default: 1]')
            [CompletionResult]::new('--task-info', '--task-info', [CompletionResultType]::ParameterName, 'Task info recorded with the lock, as JSON or @FILE (a file holding the JSON): {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}')
            [CompletionResult]::new('--complexity', '--complexity', [CompletionResultType]::ParameterName, 'Task complexity, e.g. 5 (wins over --task-info''s)')
            [CompletionResult]::new('--estimate', '--estimate', [CompletionResultType]::ParameterName, 'Estimated duration, e.g. 45min (wins over --task-info''s)')
            [CompletionResult]::new('--task-type', '--task-type', [CompletionResultType]::ParameterName, 'Task type, e.g. bug-fix (wins over --task-info''s)')
            [CompletionResult]::new('--priority', '--priority', [CompletionResultType]::ParameterName, 'Task priority, e.g. high (wins over --task-info''s)')
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Renew every this long [default: 30s, or a third of --ttl if shorter]')
            [CompletionResult]::new('--kill-grace', '--kill-grace', [CompletionResultType]::ParameterName, 'If the lock is lost: how long after SIGTERM the command gets before SIGKILL')
            [CompletionResult]::new('--also', '--also', [CompletionResultType]::ParameterName, 'Hold this lock too while CMD runs (repeatable): all are claimed in name order, so runs that share locks never deadlock, and kept together (on the coordinator by one session)')
            [CompletionResult]::new('--label', '--label', [CompletionResultType]::ParameterName, 'With --next: the issue must have this label (repeatable: all of them)')
            [CompletionResult]::new('--exclude-label', '--exclude-label', [CompletionResultType]::ParameterName, 'With --next: the issue must not have this label (repeatable: none of them)')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--retry-failed', '--retry-failed', [CompletionResultType]::ParameterName, 'With --next: take issues that carry --fail-label too')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast')
            [CompletionResult]::new('--nonblock', '--nonblock', [CompletionResultType]::ParameterName, 'Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast')
            [CompletionResult]::new('--shared', '--shared', [CompletionResultType]::ParameterName, 'A shared (read) hold: held with other shared holds, never with an exclusive one; it waits behind a waiting exclusive claim (coordinator, local, Redis, PostgreSQL)')
            [CompletionResult]::new('--next', '--next', [CompletionResultType]::ParameterName, 'Claim the oldest open issue with no lock (github backend); exit 3 when none is free')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;steal-stale' {
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'With --all on GitHub: how far back to look for lock activity (older locks are not found)')
            [CompletionResult]::new('--ttl', '--ttl', [CompletionResultType]::ParameterName, 'Lease of the lock taken over')
            [CompletionResult]::new('--task-info', '--task-info', [CompletionResultType]::ParameterName, 'Task info recorded with the lock, as JSON or @FILE (a file holding the JSON): {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}')
            [CompletionResult]::new('--complexity', '--complexity', [CompletionResultType]::ParameterName, 'Task complexity, e.g. 5 (wins over --task-info''s)')
            [CompletionResult]::new('--estimate', '--estimate', [CompletionResultType]::ParameterName, 'Estimated duration, e.g. 45min (wins over --task-info''s)')
            [CompletionResult]::new('--task-type', '--task-type', [CompletionResultType]::ParameterName, 'Task type, e.g. bug-fix (wins over --task-info''s)')
            [CompletionResult]::new('--priority', '--priority', [CompletionResultType]::ParameterName, 'Task priority, e.g. high (wins over --task-info''s)')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Release every stale lock instead (a janitor for a scheduled job); live locks are kept')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'With --all: list what would be released and change nothing')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;elect' {
            [CompletionResult]::new('--value', '--value', [CompletionResultType]::ParameterName, 'What the leader publishes while it leads (its address, say): `sentinel leader` shows it')
            [CompletionResult]::new('--ttl', '--ttl', [CompletionResultType]::ParameterName, 'The leader''s lease: a leader that stops renewing (killed, cut off) is replaced this long after its last renewal')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Give up the campaign after this long (exit 3) [default: campaign until elected]')
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Renew every this long [default: a third of --ttl]')
            [CompletionResult]::new('--kill-grace', '--kill-grace', [CompletionResultType]::ParameterName, 'If leadership is lost: how long after SIGTERM the command gets before SIGKILL')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;leader' {
            [CompletionResult]::new('--every', '--every', [CompletionResultType]::ParameterName, 'With --watch: how often to look')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Print one JSON line per change of leader (the current one first), until stopped')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;barrier' {
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'How many participants open it; every participant gives the same')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up after this long (exit 3), leaving the barrier [default: wait until it opens]')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;watch' {
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Watch every lock whose name starts with P ("" for all)')
            [CompletionResult]::new('--since-revision', '--since-revision', [CompletionResultType]::ParameterName, 'Start after this revision (the last one a previous watch printed) instead of now')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;kv' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Print a key''s value: a string as it is, any other JSON value on one line; exit 6 when the key does not exist')
            [CompletionResult]::new('put', 'put', [CompletionResultType]::ParameterValue, 'Write a key''s value (JSON, or else text) and print the revision of the write')
            [CompletionResult]::new('del', 'del', [CompletionResultType]::ParameterValue, 'Delete a key; exit 0 whether or not it existed')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'sentinel;kv;get' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;kv;put' {
            [CompletionResult]::new('--if-revision', '--if-revision', [CompletionResultType]::ParameterName, 'Write only if the key''s revision (its mod_revision) is N; 0: only if the key does not exist (exit 3 otherwise)')
            [CompletionResult]::new('--merge', '--merge', [CompletionResultType]::ParameterName, 'How VALUE combines with the stored value')
            [CompletionResult]::new('--ttl', '--ttl', [CompletionResultType]::ParameterName, 'The key ends this long after the write unless written again (1s to 365d); without it, the key stays until deleted')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;kv;del' {
            [CompletionResult]::new('--if-revision', '--if-revision', [CompletionResultType]::ParameterName, 'Delete only if the key''s revision (its mod_revision) is N (exit 3 otherwise)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;kv;list' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;kv;watch' {
            [CompletionResult]::new('--since-revision', '--since-revision', [CompletionResultType]::ParameterName, 'Start after this revision (the last one a previous watch printed) instead of now')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;kv;help' {
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Print a key''s value: a string as it is, any other JSON value on one line; exit 6 when the key does not exist')
            [CompletionResult]::new('put', 'put', [CompletionResultType]::ParameterValue, 'Write a key''s value (JSON, or else text) and print the revision of the write')
            [CompletionResult]::new('del', 'del', [CompletionResultType]::ParameterValue, 'Delete a key; exit 0 whether or not it existed')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'sentinel;kv;help;get' {
            break
        }
        'sentinel;kv;help;put' {
            break
        }
        'sentinel;kv;help;del' {
            break
        }
        'sentinel;kv;help;list' {
            break
        }
        'sentinel;kv;help;watch' {
            break
        }
        'sentinel;kv;help;help' {
            break
        }
        'sentinel;completions' {
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'sentinel;metrics' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format; --json prints one JSON object instead')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'With --repo-wide: the window of lock activity to count')
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--repo-wide', '--repo-wide', [CompletionResultType]::ParameterName, 'GitHub: count the whole repository''s grants, releases and take-overs from its lock comments')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;serve' {
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on for clients and peers: an IP address or a host name, with the port')
            [CompletionResult]::new('--id', '--id', [CompletionResultType]::ParameterName, 'This node''s id in the cluster (1 or more)')
            [CompletionResult]::new('--peer', '--peer', [CompletionResultType]::ParameterName, 'A member of the cluster and the address peers reach it at; repeat for each member, this node included, with the same list on every node (the lowest id forms the cluster)')
            [CompletionResult]::new('--peer-token', '--peer-token', [CompletionResultType]::ParameterName, 'Token the cluster''s nodes authenticate each other''s Raft messages with: required with other --peers, the same on every node, unlike the client token; never printed')
            [CompletionResult]::new('--peer-token-file', '--peer-token-file', [CompletionResultType]::ParameterName, 'Read the peer token from FILE (one trailing newline is ignored), so that it is on no command line')
            [CompletionResult]::new('--snapshot-every', '--snapshot-every', [CompletionResultType]::ParameterName, 'Snapshot the lock state every N log entries (and keep up to N entries after it), as etcd''s --snapshot-count: fewer keep less log in memory and replay less at start, more write the (up to tens of MB) snapshot less often')
            [CompletionResult]::new('--kv-quota', '--kv-quota', [CompletionResultType]::ParameterName, 'The key-value store''s size quota in bytes: its keys, values (as JSON) and 128 bytes a key count against it, and a write past it is refused (429 kv_quota); at most 2 GiB; give every node the same')
            [CompletionResult]::new('--acl', '--acl', [CompletionResultType]::ParameterName, 'Client tokens and the lock-name prefixes each may act on, as JSON: {"tokens":[{"name":"ci","token":"…" or "sha256":"…","prefixes":["ci/"]}]}; the client token, if also given, is one more, named "default", allowed every lock')
            [CompletionResult]::new('--audit-log', '--audit-log', [CompletionResultType]::ParameterName, 'Append one JSON line per write a client asks of this node (time, token name, client address, operation, lock, result, fencing token) to FILE; writes are refused while it cannot be written')
            [CompletionResult]::new('--tls-cert', '--tls-cert', [CompletionResultType]::ParameterName, 'Serve HTTPS to clients and peers with this PEM certificate chain (with --tls-key); the --peer addresses are then reached with https')
            [CompletionResult]::new('--tls-key', '--tls-key', [CompletionResultType]::ParameterName, 'PEM private key of --tls-cert')
            [CompletionResult]::new('--tls-client-ca', '--tls-client-ca', [CompletionResultType]::ParameterName, 'Require client certificates signed by the CAs in this PEM file (mTLS); peers present --tls-cert')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--public-metrics', '--public-metrics', [CompletionResultType]::ParameterName, 'Serve GET /metrics without a client token (it shows no lock names)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'sentinel;cluster' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show the leader, term, members, commit and applied index and each follower''s lag')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'sentinel;cluster;status' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'sentinel;cluster;help' {
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show the leader, term, members, commit and applied index and each follower''s lag')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'sentinel;cluster;help;status' {
            break
        }
        'sentinel;cluster;help;help' {
            break
        }
        'sentinel;doctor' {
            [CompletionResult]::new('--repo', '--repo', [CompletionResultType]::ParameterName, 'GitHub repository OWNER/REPO whose issues are the locks')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed')
            [CompletionResult]::new('--api-url', '--api-url', [CompletionResultType]::ParameterName, 'GitHub API URL (GitHub Enterprise: https://HOST/api/v3)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, '`sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is http); requests fail over between them')
            [CompletionResult]::new('--auth-token', '--auth-token', [CompletionResultType]::ParameterName, 'Bearer token of the sentinel server cluster: `serve` requires it on every client request (give every node the same one), the other commands send it; never printed')
            [CompletionResult]::new('--auth-token-file', '--auth-token-file', [CompletionResultType]::ParameterName, 'Read the bearer token of the sentinel server cluster from FILE (one trailing newline is ignored), so that it is on no command line; instead of --auth-token')
            [CompletionResult]::new('--ca-cert', '--ca-cert', [CompletionResultType]::ParameterName, 'PEM file of the certificate authorities to trust for https:// servers instead of the system''s roots (`serve`: for its peers)')
            [CompletionResult]::new('--client-cert', '--client-cert', [CompletionResultType]::ParameterName, 'PEM certificate to present to servers that require client certificates (with --client-key)')
            [CompletionResult]::new('--client-key', '--client-key', [CompletionResultType]::ParameterName, 'PEM private key of --client-cert')
            [CompletionResult]::new('--redis-url', '--redis-url', [CompletionResultType]::ParameterName, 'Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed')
            [CompletionResult]::new('--etcd-endpoints', '--etcd-endpoints', [CompletionResultType]::ParameterName, 'Client URLs of the etcd cluster of the etcd backend, comma-separated (http://HOST:2379,...); requests fail over between them')
            [CompletionResult]::new('--backend', '--backend', [CompletionResultType]::ParameterName, 'Which backend holds the locks')
            [CompletionResult]::new('--worker-id', '--worker-id', [CompletionResultType]::ParameterName, 'Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]')
            [CompletionResult]::new('--node-id', '--node-id', [CompletionResultType]::ParameterName, 'Which machine the worker runs on [default: host name]')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Where local locks and caches live [default: the user''s data directory]')
            [CompletionResult]::new('--trust', '--trust', [CompletionResultType]::ParameterName, 'GitHub logins whose lock comments are trusted besides owners, members and collaborators')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print exactly one JSON object on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v info, -vv debug); RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'sentinel;help' {
            [CompletionResult]::new('claim', 'claim', [CompletionResultType]::ParameterValue, 'Claim a lock: a GitHub issue number, or a name on the other backends')
            [CompletionResult]::new('release', 'release', [CompletionResultType]::ParameterValue, 'Release a lock held by this worker')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show who holds a lock, or every held lock')
            [CompletionResult]::new('heartbeat', 'heartbeat', [CompletionResultType]::ParameterValue, 'Renew a held lock: once, or as a sidecar until stopped')
            [CompletionResult]::new('run', 'run', [CompletionResultType]::ParameterValue, 'Claim a lock, run a command while renewing it, release it when the command ends')
            [CompletionResult]::new('steal-stale', 'steal-stale', [CompletionResultType]::ParameterValue, 'Take over a stale lock, or release every stale lock (--all)')
            [CompletionResult]::new('elect', 'elect', [CompletionResultType]::ParameterValue, 'Campaign in an election and run a command while leader: the leader is the holder of the election''s lock')
            [CompletionResult]::new('leader', 'leader', [CompletionResultType]::ParameterValue, 'Show an election''s leader, or every change of leader (--watch)')
            [CompletionResult]::new('barrier', 'barrier', [CompletionResultType]::ParameterValue, 'Wait until --count participants have arrived at a barrier, then all go on')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print one JSON line per event of the locks (acquired, released, expired, queued), on the coordinator or the local backend, until stopped')
            [CompletionResult]::new('kv', 'kv', [CompletionResultType]::ParameterValue, 'Read and write the coordinator''s key-value store (--server): JSON values under keys, each write numbered by the store''s revision')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('metrics', 'metrics', [CompletionResultType]::ParameterValue, 'Show lock metrics: this host''s counters, or with --repo-wide the repository''s history')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run a coordinator node: named locks replicated with Raft, served over HTTP')
            [CompletionResult]::new('cluster', 'cluster', [CompletionResultType]::ParameterValue, 'Inspect the coordinator cluster given with --server')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check the options and the backend they choose: which one and why, where the GitHub token comes from, and whether it can be used (exit 0 usable, else the failure''s exit code)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'sentinel;help;claim' {
            break
        }
        'sentinel;help;release' {
            break
        }
        'sentinel;help;status' {
            break
        }
        'sentinel;help;heartbeat' {
            break
        }
        'sentinel;help;run' {
            break
        }
        'sentinel;help;steal-stale' {
            break
        }
        'sentinel;help;elect' {
            break
        }
        'sentinel;help;leader' {
            break
        }
        'sentinel;help;barrier' {
            break
        }
        'sentinel;help;watch' {
            break
        }
        'sentinel;help;kv' {
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Print a key''s value: a string as it is, any other JSON value on one line; exit 6 when the key does not exist')
            [CompletionResult]::new('put', 'put', [CompletionResultType]::ParameterValue, 'Write a key''s value (JSON, or else text) and print the revision of the write')
            [CompletionResult]::new('del', 'del', [CompletionResultType]::ParameterValue, 'Delete a key; exit 0 whether or not it existed')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)')
            [CompletionResult]::new('watch', 'watch', [CompletionResultType]::ParameterValue, 'Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get')
            break
        }
        'sentinel;help;kv;get' {
            break
        }
        'sentinel;help;kv;put' {
            break
        }
        'sentinel;help;kv;del' {
            break
        }
        'sentinel;help;kv;list' {
            break
        }
        'sentinel;help;kv;watch' {
            break
        }
        'sentinel;help;completions' {
            break
        }
        'sentinel;help;metrics' {
            break
        }
        'sentinel;help;serve' {
            break
        }
        'sentinel;help;cluster' {
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show the leader, term, members, commit and applied index and each follower''s lag')
            break
        }
        'sentinel;help;cluster;status' {
            break
        }
        'sentinel;help;doctor' {
            break
        }
        'sentinel;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
