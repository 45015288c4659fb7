//! Lua scripts run by SHA, loaded where they run.
//!
//! `redis::Script` loads a script that a server lacks (`NOSCRIPT`) with `SCRIPT LOAD`,
//! which a cluster connection sends to every primary: one node that is down or frozen
//! would then fail the first call of every script on every other node (after a node
//! restarts with an empty script cache, say). Here a call that meets `NOSCRIPT` is sent
//! again as `EVAL` with the script's source, routed like the call itself, which also
//! caches the script on that server.

use deadpool_redis::redis::{
    self, Cmd, ErrorKind, RedisResult, ServerErrorKind, ToRedisArgs, Value, aio::ConnectionLike,
};

/// A script and its SHA-1, computed once.
pub(super) struct LuaScript {
    source: String,
    sha: String,
}

impl LuaScript {
    pub(super) fn new(source: String) -> Self {
        let sha = redis::Script::new(&source).get_hash().to_owned();
        Self { source, sha }
    }

    /// A call of this script, to which keys and arguments are added in order.
    pub(super) fn invocation(&self) -> Invocation<'_> {
        Invocation {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a script.
pub(super) struct Invocation<'a> {
    script: &'a LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    /// Adds a key (`KEYS[n]`).
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn command(&self, name: &str, script: &str) -> Cmd {
        let mut command = redis::cmd(name);
        command
            .arg(script)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        command
    }

    /// Runs the call by SHA, and with its source where the server lacks it.
    pub(super) async fn invoke(&self, conn: &mut impl ConnectionLike) -> RedisResult<Value> {
        match self
            .command("EVALSHA", &self.script.sha)
            .query_async(conn)
            .await
        {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", &self.script.source)
                    .query_async(conn)
                    .await
            }
            outcome => outcome,
        }
    }
}
