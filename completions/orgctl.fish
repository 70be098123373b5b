# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_orgctl_global_optspecs
    string join \n database-url= o/output= y/yes lock-timeout= statement-timeout= pooler= q/quiet v/verbose reason= h/help V/version
end

function __fish_orgctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_orgctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_orgctl_using_subcommand
    set -l cmd (__fish_orgctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c orgctl -n "__fish_orgctl_needs_command" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_needs_command" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_needs_command" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_needs_command" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_needs_command" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_needs_command" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_needs_command" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_needs_command" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_needs_command" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_needs_command" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "install-platform-agent" -d 'Make the platform agent the single root of the org, moving every anchor to it.'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "token" -d 'Mint, list, revoke and anchor org API tokens'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "secret" -d 'Set, delete and list workspace and global secrets; verify and rotate their key'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "backfill" -d 'Install the platform agent across a fleet of tenant databases'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "status" -d 'The org\'s invariants at a glance; exit 1 when any is broken (a CI gate)'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "audit" -d 'Who changed this tenant, when, why and how it ended; `audit verify` checks the chain.'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "dev" -d 'A throwaway local PostgreSQL with a sample org, for trying orgctl out'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c orgctl -n "__fish_orgctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l id -d 'Id of the platform agent. Default: the existing kind=\'platform\' row, else a new id' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l name -d 'Name of the platform agent. Default on create: "Platform Agent"; an existing agent keeps its name unless this is given' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l model -d 'The agent\'s model, a model registered for its runtime. With --provision it goes to the platform, which validates it (a refusal is exit 3, MODEL unchanged) and sets MODEL; without, orgctl writes the MODEL secret itself, unvalidated, and it applies at the next provision (a MOLECULE_MODEL secret outranks it; orgctl warns about both)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l expect-plan -d 'Refuse (exit 3) unless the plan computed now has this plan_hash (from a reviewed dry run)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l wait -d 'With --provision: watch the agent\'s status (read-only, about once a second) for up to DUR (default: the platform\'s provisioning deadline for the agent\'s runtime, 30m for hermes, else 12m); exit 0 when it is online, 1 when the platform marks it failed (its last error is shown), when it is hibernating or hibernated, or when DUR passes. provisioning and awaiting_agent are waited through. The change stays committed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l platform-url -d 'Base URL of the platform API, for --provision (needs MOLECULE_ADMIN_TOKEN)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l allow-missing-model -d 'Proceed even though the agent has no MODEL secret and this run does not provision it (the platform marks an agent that registers without MODEL failed). Not needed with --provision: the platform seeds MODEL when it provisions the agent'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l dry-run -d 'Show the plan and change nothing (read-only: no locks, no writes)'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l detailed-exitcode -d 'With --dry-run: exit 4 when changes are pending, 0 when there is nothing to do'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -l provision -d 'After the commit, ask the platform to provision the agent through its own route (POST {URL}/admin/org/platform-agent/ensure with MOLECULE_ADMIN_TOKEN) when nothing runs or starts it: an agent this run created, or one that is offline, failed or has no status. Never when it is online or degraded (a running root is never restarted), nor provisioning or awaiting_agent (the platform is starting it), nor removed, paused, hibernated, hibernating or on an external runtime'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand install-platform-agent" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -f -a "mint" -d 'Mint a full-admin org API token; the plaintext is printed once, alone, on stdout.'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -f -a "list" -d 'List live tokens, newest first (never a hash or plaintext).'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -f -a "revoke" -d 'Revoke a token by id or unique prefix, or every live token with a provenance label.'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -f -a "anchor" -d 'Anchor a token to the org root (or --org); moving an anchored token needs --force.'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and not __fish_seen_subcommand_from mint list revoke anchor help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l name -d 'A name for the token (at most 100 characters)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l org -d 'Anchor to this org root (a workspace with no parent). Default: the platform agent, else the only root' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l created-by -d 'Provenance label (at most 200 characters). Default: orgctl:<OS user>' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from mint" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l org -d 'Only tokens anchored to this workspace' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l created-by -d 'Only tokens with exactly this created_by label (preview of revoke --created-by)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l limit -d 'Show at most N tokens (0 = all). Default: all, but 100 in the table on a terminal' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l all -d 'Include revoked tokens (and the revoked_at column)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l unanchored -d 'Only tokens with no org_id'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -l wide -d 'Full ids and timestamps in the table (wide). The default table fits the terminal (80 columns when its width is unknown): the prefix is the handle `revoke` and `anchor` take, org ids are cut to 8 characters, times to dates, long names end in \'…\'. JSON always has everything'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -l created-by -d 'Revoke every live token with exactly this created_by label (incident response); the label\'s tokens revoked earlier are reported as already revoked' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from revoke" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l org -d 'Anchor to this root instead of the org root (the platform agent, else the only root)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l stale -d 'Move every stale anchor to the root: live tokens on a non-root, any token on a former root'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l dry-run -d 'With --stale: show what would move and change nothing (read-only, never asks)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -l force -d 'Move a token that is already anchored to another workspace'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from anchor" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "mint" -d 'Mint a full-admin org API token; the plaintext is printed once, alone, on stdout.'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "list" -d 'List live tokens, newest first (never a hash or plaintext).'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Revoke a token by id or unique prefix, or every live token with a provenance label.'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "anchor" -d 'Anchor a token to the org root (or --org); moving an anchored token needs --force.'
complete -c orgctl -n "__fish_orgctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "set" -d 'Set a secret; the value comes from stdin, --value-file, or a hidden prompt. Never argv'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "delete" -d 'Delete a secret (MODEL on the platform agent needs --force)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "list" -d 'List secret keys with scope and version (never values)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "restart" -d 'Replay the restarts of a secret without touching its value'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "verify" -d 'Check that every encrypted secret decrypts with SECRETS_ENCRYPTION_KEY (read-only)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "rekey" -d 'Re-encrypt every secret under a new key, or encrypt the plaintext ones'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and not __fish_seen_subcommand_from set delete list restart verify rekey help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l value-file -d 'Read the value from this file (one trailing newline stripped). Default: stdin when it is piped, else a hidden prompt' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l platform-url -d 'Base URL of the platform API for restarts (needs MOLECULE_ADMIN_TOKEN). Without it the restart plan is printed instead' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l restart-timeout -d 'Deadline for all the restart calls together (e.g. 90s, 10m): calls not started by then are reported as not attempted (the secret stays committed; exit 1)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l global -d 'The secret is global (then the only positional argument is KEY)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l no-restart -d 'Do not restart affected workspaces (they are reported as skipped: no-restart)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -l dry-run -d 'Show the write and the restart plan; change nothing, restart nothing, never ask'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from set" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l platform-url -d 'Base URL of the platform API for restarts' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l restart-timeout -d 'Deadline for all the restart calls together (e.g. 90s, 10m): calls not started by then are reported as not attempted (the secret stays committed; exit 1)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l global -d 'The secret is global (then the only positional argument is KEY)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l no-restart -d 'Do not restart affected workspaces (they are reported as skipped: no-restart)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l force -d 'Allow deleting MODEL from the platform agent (it is still not restarted)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -l dry-run -d 'Show the delete and the restart plan; change nothing, restart nothing, never ask'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from delete" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -l global -d 'The secret is global (then the only positional argument is KEY)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l platform-url -d 'Base URL of the platform API (needs MOLECULE_ADMIN_TOKEN). Without it the restart plan is printed instead' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l global -d 'The secret is global (then the only positional argument is KEY)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l all -d 'Restart every eligible workspace, also those already recorded as restarted'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -l dry-run -d 'Show which workspaces would be restarted; restart nothing, never ask'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from restart" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l new-key-file -d 'Read the new key from the first line of this file (instead of SECRETS_ENCRYPTION_KEY_NEW). Keep it at mode 0600' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l expect-plan -d 'Refuse (exit 3) unless the plan computed now has this plan_hash (from a reviewed dry run)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l plaintext-only -d 'Only encrypt the plaintext (version 0) rows, with the current key; leave the rest'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -l dry-run -d 'Show the rows per table and version that would be re-encrypted, and check that every encrypted row decrypts; change nothing (read-only, no locks)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from rekey" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "set" -d 'Set a secret; the value comes from stdin, --value-file, or a hidden prompt. Never argv'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a secret (MODEL on the platform agent needs --force)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "list" -d 'List secret keys with scope and version (never values)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "restart" -d 'Replay the restarts of a secret without touching its value'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Check that every encrypted secret decrypts with SECRETS_ENCRYPTION_KEY (read-only)'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "rekey" -d 'Re-encrypt every secret under a new key, or encrypt the plaintext ones'
complete -c orgctl -n "__fish_orgctl_using_subcommand secret; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -f -a "run" -d 'Install the platform agent on every tenant in a tenants file'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -f -a "rollback" -d 'Restore tenants to the state snapshotted by a run'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -f -a "status" -d 'Show each tenant\'s state under a run (read-only)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and not __fish_seen_subcommand_from run rollback status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l tenants -d 'Tenants file: one "NAME DATABASE_URL [PLATFORM_URL]" per line (\'-\' for stdin); blank lines and \'#\' comments are ignored. Names are letters, digits, \'.\', \'_\' or \'-\'. The platform URL is used by --provision' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l concurrency -d 'Tenants in flight at once (one connection each)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l shard -d 'Only the tenants whose stable hash of NAME modulo N is I-1 (e.g. 2/8). The hash is the first 8 bytes of sha256(NAME) as a big-endian integer: the same on every machine' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l shards -d 'N shards, this worker\'s taken from JOB_COMPLETION_INDEX (0-based, as a Kubernetes Indexed Job sets it): shard JOB_COMPLETION_INDEX+1 of N' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l canary -d 'Run the first N selected tenants alone first; stop before the rest if any of them fails' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l run-id -d 'Run id (resume a run by giving its id again). Default: a new one, printed first' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l model -d 'The agent\'s model on every tenant (registered for the agents\' runtime). On a tenant provisioned through its platform (--provision and a platform URL) the platform validates and sets it; elsewhere orgctl writes MODEL itself, unvalidated (orgctl warns)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l report -d 'Write the summary as JSON to this file (run id, start and end, totals, every tenant). A FILE ending in .jsonl is written as JSON Lines as the run goes: one tenant per line as it finishes, then a summary line, so a killed run leaves a usable partial report' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l wait -d 'With --provision: per tenant, watch the agent for up to DUR (default: the platform\'s provisioning deadline for its runtime, 30m for hermes, else 12m) until it is online (the tenant\'s provision result says online, failed with the platform\'s last error, or the status at the deadline)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l allow-missing-model -d 'Install even where the agent would have no MODEL secret and is not provisioned through its platform (which seeds MODEL)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l replace-model -d 'Replace a different MODEL on tenants whose agent already exists. Without it such a tenant fails with a refusal naming this flag, so a rerun with another --model never silently changes the model of agents that are already running'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l dry-run -d 'Plan every tenant read-only and report; change and create nothing'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -l provision -d 'After each tenant\'s commit, ask that tenant\'s platform (the third field of its line) to provision its agent through the platform\'s own route when nothing runs or starts it, as install-platform-agent --provision does; never when it is online, degraded, provisioning or awaiting_agent. A tenant without a platform URL is reported skipped, not failed'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from run" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l run-id -d 'The run to roll back' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l tenants -d 'Tenants file: one "NAME DATABASE_URL" per line (\'-\' for stdin)' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l shard -d 'Only the tenants whose stable hash of NAME modulo N is I-1 (e.g. 2/8). The hash is the first 8 bytes of sha256(NAME) as a big-endian integer: the same on every machine' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l shards -d 'N shards, this worker\'s taken from JOB_COMPLETION_INDEX (0-based, as a Kubernetes Indexed Job sets it): shard JOB_COMPLETION_INDEX+1 of N' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l tenant -d 'Only these tenants (repeatable)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l force -d 'Roll back despite drift; new rows go to the oldest former root'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -l dry-run -d 'Show what would be restored and the drift; change nothing'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from rollback" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l run-id -d 'The run to report on' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l tenants -d 'Tenants file: one "NAME DATABASE_URL" per line (\'-\' for stdin)' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l shard -d 'Only the tenants whose stable hash of NAME modulo N is I-1 (e.g. 2/8). The hash is the first 8 bytes of sha256(NAME) as a big-endian integer: the same on every machine' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l shards -d 'N shards, this worker\'s taken from JOB_COMPLETION_INDEX (0-based, as a Kubernetes Indexed Job sets it): shard JOB_COMPLETION_INDEX+1 of N' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from help" -f -a "run" -d 'Install the platform agent on every tenant in a tenants file'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from help" -f -a "rollback" -d 'Restore tenants to the state snapshotted by a run'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show each tenant\'s state under a run (read-only)'
complete -c orgctl -n "__fish_orgctl_using_subcommand backfill; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -l limit -d 'How many offending rows to name per finding (and roots to list) before summarising as a count; 0 shows counts only' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand status" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l since -d 'Only rows since then: a duration back from now (30m, 12h, 7d, 2w), an RFC 3339 timestamp (2026-12-01T07:00:00Z) or a date (2026-12-01, midnight UTC)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l command -d 'Only rows of this command (\'secret set\'); a name without a space also matches its family (secret: secret set, secret delete, secret restart)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l limit -d 'Show at most N rows (0: all). Default: 50 in a table on a terminal, else all' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -f -a "verify" -d 'Check the audit log\'s hash chain: exit 0 when intact, 1 naming the first row that was altered, removed or inserted out of order.'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and not __fish_seen_subcommand_from verify help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Check the audit log\'s hash chain: exit 0 when intact, 1 naming the first row that was altered, removed or inserted out of order.'
complete -c orgctl -n "__fish_orgctl_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -f -a "up" -d 'Start (or reuse) a throwaway PostgreSQL with the platform schema and a sample org; prints the DATABASE_URL on stdout'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -f -a "down" -d 'Stop the throwaway PostgreSQL and delete its data'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -f -a "seed" -d 'Add a large generated org to a dev database (for benchmarks)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and not __fish_seen_subcommand_from up down seed help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l dir -d 'Where the dev server keeps its data. Default: $TMPDIR/orgctl-dev-<uid> (/tmp unless TMPDIR is set), the same whatever the current directory. `dev down` only stops and deletes a directory that `dev up` created (its marker must name the data directory\'s system identifier); anything else is refused (exit 3) untouched' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l port -d 'Loopback port to listen on. Default: a free port' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from up" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -l dir -d 'Where the dev server keeps its data. Default: $TMPDIR/orgctl-dev-<uid> (/tmp unless TMPDIR is set), the same whatever the current directory. `dev down` only stops and deletes a directory that `dev up` created (its marker must name the data directory\'s system identifier); anything else is refused (exit 3) untouched' -r -F
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from down" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l roots -d 'Number of root workspaces' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l workspaces -d 'Total number of workspaces (roots included)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l tokens -d 'Total number of tokens' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l tokens-on-roots -d 'How many of the tokens are anchored to roots (the rest to non-roots or unanchored)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l revoked-pct -d 'Percentage of tokens that are revoked' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l allowlist -d 'Allowlist rows spread over the roots' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l plugins -d 'Distinct plugin names (fewer names mean more collisions across roots)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from seed" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from help" -f -a "up" -d 'Start (or reuse) a throwaway PostgreSQL with the platform schema and a sample org; prints the DATABASE_URL on stdout'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from help" -f -a "down" -d 'Stop the throwaway PostgreSQL and delete its data'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from help" -f -a "seed" -d 'Add a large generated org to a dev database (for benchmarks)'
complete -c orgctl -n "__fish_orgctl_using_subcommand dev; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -l database-url -d 'PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...). The password is never printed' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -s o -l output -d 'Output format on stdout: a human table, or exactly one JSON document' -r -f -a "table\t'Human-readable tables'
json\t'One JSON document on stdout'"
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -l lock-timeout -d 'How long to wait for the tenant\'s advisory lock and for row locks (e.g. 500ms, 5s, 2m)' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -l statement-timeout -d 'Abort any single statement that runs longer than this (e.g. 30s, 10m). Default, or 0: no limit' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -l pooler -d 'What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through any pooler and on a direct connection: statements are prepared unnamed, so nothing outlives a transaction on a pooled server connection. `session` or `none` (a session pooler, or a direct connection) lets orgctl cache named prepared statements instead' -r -f -a "transaction\t'A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown'
session\t'A session pooler (PgBouncer pool_mode=session)'
none\t'A direct connection to PostgreSQL'"
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -l reason -d 'Why this change is made (an incident or change number), stored on every audit row the command writes. Required for changes when ORGCTL_REQUIRE_REASON=1' -r
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -s y -l yes -d 'Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal'
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -s q -l quiet -d 'Only print errors on stderr'
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -s v -l verbose -d 'More detail on stderr: -v the target, timings and the SQL statement count; -vv also each statement (time, rows, start of its text; never a bound value)'
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orgctl -n "__fish_orgctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "install-platform-agent" -d 'Make the platform agent the single root of the org, moving every anchor to it.'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "token" -d 'Mint, list, revoke and anchor org API tokens'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "secret" -d 'Set, delete and list workspace and global secrets; verify and rotate their key'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "backfill" -d 'Install the platform agent across a fleet of tenant databases'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "status" -d 'The org\'s invariants at a glance; exit 1 when any is broken (a CI gate)'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "audit" -d 'Who changed this tenant, when, why and how it ended; `audit verify` checks the chain.'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "dev" -d 'A throwaway local PostgreSQL with a sample org, for trying orgctl out'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and not __fish_seen_subcommand_from install-platform-agent token secret backfill status audit dev completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "mint" -d 'Mint a full-admin org API token; the plaintext is printed once, alone, on stdout.'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "list" -d 'List live tokens, newest first (never a hash or plaintext).'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "revoke" -d 'Revoke a token by id or unique prefix, or every live token with a provenance label.'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "anchor" -d 'Anchor a token to the org root (or --org); moving an anchored token needs --force.'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from secret" -f -a "set" -d 'Set a secret; the value comes from stdin, --value-file, or a hidden prompt. Never argv'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from secret" -f -a "delete" -d 'Delete a secret (MODEL on the platform agent needs --force)'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from secret" -f -a "list" -d 'List secret keys with scope and version (never values)'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from secret" -f -a "restart" -d 'Replay the restarts of a secret without touching its value'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from secret" -f -a "verify" -d 'Check that every encrypted secret decrypts with SECRETS_ENCRYPTION_KEY (read-only)'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from secret" -f -a "rekey" -d 'Re-encrypt every secret under a new key, or encrypt the plaintext ones'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from backfill" -f -a "run" -d 'Install the platform agent on every tenant in a tenants file'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from backfill" -f -a "rollback" -d 'Restore tenants to the state snapshotted by a run'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from backfill" -f -a "status" -d 'Show each tenant\'s state under a run (read-only)'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "verify" -d 'Check the audit log\'s hash chain: exit 0 when intact, 1 naming the first row that was altered, removed or inserted out of order.'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from dev" -f -a "up" -d 'Start (or reuse) a throwaway PostgreSQL with the platform schema and a sample org; prints the DATABASE_URL on stdout'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from dev" -f -a "down" -d 'Stop the throwaway PostgreSQL and delete its data'
complete -c orgctl -n "__fish_orgctl_using_subcommand help; and __fish_seen_subcommand_from dev" -f -a "seed" -d 'Add a large generated org to a dev database (for benchmarks)'
