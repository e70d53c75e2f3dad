//! A stand-in Bazel server: answers every `Run` with one final response chosen by the test
//! (an exit code, an exec request), and `Ping`/`Cancel` with the response cookie. No Bazel,
//! no root: it checks what jbazel does with what a server says, e.g. an exec request after
//! `build`.
//!
//! Layout (as [`super::BazelServer`] has it, without the mount namespaces): a workspace `P`
//! (with `MODULE.bazel`) in a temp dir, the filestore `R/U/H/{src,out}` with `H = md5(P)`,
//! and the cookies in `R/U/H/out/server/`.

use super::{md5_hex, POD_PATH, SESSION, USER};
use proto::command_server::command_server_server::{CommandServer, CommandServerServer};
use proto::command_server::{
    CancelRequest, CancelResponse, ExecRequest, PingRequest, PingResponse, RunRequest, RunResponse,
};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

const REQUEST_COOKIE: &str = "stand-in-request-cookie";
const RESPONSE_COOKIE: &str = "stand-in-response-cookie";

/// What the stand-in answers to `Run`.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub exit_code: i32,
    pub exec_request: Option<ExecRequest>,
}

#[derive(Clone)]
struct Service {
    answer: Arc<Mutex<Answer>>,
    /// The args of every Run received.
    runs: Arc<Mutex<Vec<Vec<String>>>>,
}

type RunStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<RunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CommandServer for Service {
    type RunStream = RunStream;

    async fn run(&self, req: Request<RunRequest>) -> Result<Response<RunStream>, Status> {
        let req = req.into_inner();
        if req.cookie != REQUEST_COOKIE {
            return Err(Status::invalid_argument("bad cookie"));
        }
        let args = req
            .arg
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(args);
        let answer = self
            .answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let started = RunResponse {
            cookie: RESPONSE_COOKIE.into(),
            command_id: "stand-in-command".into(),
            ..Default::default()
        };
        let last = RunResponse {
            cookie: RESPONSE_COOKIE.into(),
            finished: true,
            exit_code: answer.exit_code,
            exec_request: answer.exec_request,
            ..Default::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([
            Ok(started),
            Ok(last),
        ]))))
    }

    async fn cancel(
        &self,
        _req: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        Ok(Response::new(CancelResponse {
            cookie: RESPONSE_COOKIE.into(),
        }))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            cookie: RESPONSE_COOKIE.into(),
        }))
    }
}

/// The stand-in, its workspace and filestore. Stops with its runtime when dropped.
pub struct StandIn {
    pub tmp: tempfile::TempDir,
    /// `P`: the workspace (canonical).
    pub desktop: PathBuf,
    /// `R`.
    pub filestore: PathBuf,
    /// `R/U/H/out`.
    pub out: PathBuf,
    pub addr: String,
    answer: Arc<Mutex<Answer>>,
    runs: Arc<Mutex<Vec<Vec<String>>>>,
    _runtime: tokio::runtime::Runtime,
}

impl StandIn {
    pub fn start() -> anyhow::Result<StandIn> {
        let tmp = tempfile::Builder::new()
            .prefix("jbazel-stand-in.")
            .tempdir()?;
        let desktop = tmp.path().join("ws");
        std::fs::create_dir_all(&desktop)?;
        std::fs::write(desktop.join("MODULE.bazel"), "")?;
        let desktop = std::fs::canonicalize(&desktop)?;
        let filestore = tmp.path().join("fs");
        let base = filestore
            .join(USER)
            .join(md5_hex(&desktop.to_string_lossy()));
        let out = base.join("out");
        std::fs::create_dir_all(base.join("src"))?;
        std::fs::create_dir_all(out.join("server"))?;
        std::fs::write(out.join("server/request_cookie"), REQUEST_COOKIE)?;
        std::fs::write(out.join("server/response_cookie"), RESPONSE_COOKIE)?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(tmp.path().join("xdg"))?;
        }
        std::fs::create_dir_all(tmp.path().join("home"))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        let answer = Arc::new(Mutex::new(Answer::default()));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let service = Service {
            answer: answer.clone(),
            runs: runs.clone(),
        };
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(CommandServerServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(StandIn {
            tmp,
            desktop,
            filestore,
            out,
            addr,
            answer,
            runs,
            _runtime: runtime,
        })
    }

    /// What `Run` answers from now on.
    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = answer;
    }

    /// The args of every `Run` so far.
    pub fn runs(&self) -> Vec<Vec<String>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `R/U/H/src`.
    pub fn src(&self) -> PathBuf {
        self.out.with_file_name("src")
    }

    /// jbazel in the workspace, talking to the stand-in.
    pub fn jbazel(&self, jbazel: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(jbazel);
        c.args(args)
            .current_dir(&self.desktop)
            .env_clear()
            .env("PATH", POD_PATH)
            .env("HOME", self.tmp.path().join("home"))
            .env("XDG_RUNTIME_DIR", self.tmp.path().join("xdg"))
            .env("TERM", "dumb")
            .env("JBAZEL_SERVER", &self.addr)
            .env("JBAZEL_FILESTORE_ROOT", &self.filestore)
            .env("JBAZEL_USER", USER)
            .env("JBAZEL_SESSION_ID", SESSION)
            .stdin(Stdio::null());
        c
    }
}

/// An exec request as Bazel 4 writes it: `[shell, -c, line]`, in `working_directory`.
pub fn exec_request(working_directory: &str, argv: &[&str]) -> ExecRequest {
    ExecRequest {
        working_directory: working_directory.as_bytes().to_vec(),
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        environment_variable: Vec::new(),
    }
}
