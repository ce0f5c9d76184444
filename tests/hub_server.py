"""A local stand-in for the Hugging Face Hub's upload API, for the real huggingface_hub client.

The Hub cannot be reached from tests, so this server (stdlib http.server, one thread)
answers the requests that `HfApi.create_repo` and `HfApi.create_commit` send, as the
client of huggingface_hub 2.4.0 sends them (read from its source: hf_api.py,
_commit_api.py, lfs.py):

  POST /api/repos/create                          create a repo (409 if it exists)
  POST /api/validate-yaml                         README.md metadata check (YAML must parse)
  POST /api/models/{repo}/preupload/{rev}         per file: "regular" or "lfs"
  POST /{repo}.git/info/lfs/objects/batch         LFS batch: "basic" transfer, one PUT per object
  PUT  /lfs-upload/{oid}                          the object's bytes (like a pre-signed URL: no token)
  POST /{repo}.git/info/lfs/objects/verify        the object arrived whole
  POST /api/models/{repo}/commit/{rev}            NDJSON: header, "file" (base64) and "lfsFile" lines
  GET  /api/models/{repo}[/revision/{rev}]        repo info

Every request is recorded (method, path, headers with lower-case names, body) so tests can check what reached
the "Hub", including that the token appears nowhere but in Authorization headers.
Files go up over plain HTTP (LFS), not Xet: the client uses Xet whenever `hf_xet` is
installed, so tests set HF_HUB_DISABLE_XET=1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".model")
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Repo:
    private: bool
    files: dict = field(default_factory=dict)   # path -> bytes
    commits: list = field(default_factory=list)  # one list of NDJSON items per commit


class HubServer:
    """`with HubServer(token="hf_x") as hub:` then HfApi(endpoint=hub.url, token="hf_x")."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}   # LFS storage: sha256 -> bytes
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body=None, headers: dict | None = None):
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {hub.token}":
                    return True
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def _route(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hub.lock:
                    hub.requests.append({"method": method, "path": self.path, "body": body,
                                         "headers": {k.lower(): v for k, v in self.headers.items()}})
                path = self.path.split("?")[0]
                for pattern, handler in routes:
                    m = re.fullmatch(pattern, f"{method} {path}")
                    if m:
                        return handler(self, body, **m.groupdict())
                self._reply(404, {"error": f"no route for {method} {path}"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

            # --- endpoints -------------------------------------------------------
            def create_repo(self, body):
                if not self._authorized():
                    return
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                if repo_id in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo",
                                             "url": f"{hub.url}/{repo_id}"})
                hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
                self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

            def validate_yaml(self, body):
                content = json.loads(body)["content"]
                m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
                try:
                    if not m or not isinstance(yaml.safe_load(m.group(1)), dict):
                        raise ValueError("no metadata block")
                except (ValueError, yaml.YAMLError) as e:
                    return self._reply(400, {"errors": [{"message": str(e)}]})
                self._reply(200, {"errors": [], "warnings": []})

            def _repo(self, repo) -> Repo | None:
                if not self._authorized():
                    return None
                if repo not in hub.repos:
                    self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    return None
                return hub.repos[repo]

            def preupload(self, body, repo, rev):
                if self._repo(repo) is None:
                    return
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "shouldIgnore": False, "oid": None,
                          "uploadMode": "lfs" if (f["path"].endswith(LFS_SUFFIXES)
                                                  or b"\0" in base64.b64decode(f["sample"]))
                          else "regular"} for f in files]
                self._reply(200, {"files": modes})

            def lfs_batch(self, body, repo):
                if self._repo(repo) is None:
                    return
                payload = json.loads(body)
                assert payload["operation"] == "upload" and "basic" in payload["transfers"]
                objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                            "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"},
                                        "verify": {"href": f"{hub.url}/{repo}.git/info/lfs/objects/verify"}}}
                           for o in payload["objects"]]
                self._reply(200, {"transfer": "basic", "objects": objects})

            def lfs_put(self, body, oid):
                if hashlib.sha256(body).hexdigest() != oid:
                    return self._reply(400, {"error": "sha256 mismatch"})
                hub.objects[oid] = body
                self._reply(200)

            def lfs_verify(self, body, repo):
                if self._repo(repo) is None:
                    return
                obj = json.loads(body)
                if len(hub.objects.get(obj["oid"], b"")) != obj["size"] or obj["oid"] not in hub.objects:
                    return self._reply(404, {"error": "object not uploaded"})
                self._reply(200)

            def commit(self, body, repo, rev):
                r = self._repo(repo)
                if r is None:
                    return
                items = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                staged = {}
                for item in items[1:]:
                    value = item["value"]
                    if item["key"] == "file":
                        staged[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in hub.objects:
                            return self._reply(400, {"error": f"LFS object of {value['path']} was never uploaded"})
                        staged[value["path"]] = hub.objects[value["oid"]]
                    else:
                        return self._reply(400, {"error": f"unexpected commit item {item['key']}"})
                r.files.update(staged)
                r.commits.append(items)
                oid = hashlib.sha1(body).hexdigest()
                self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

            def repo_info(self, body, repo, rev=None):
                r = self._repo(repo)
                if r is not None:
                    self._reply(200, {"id": repo, "private": r.private, "sha": "0" * 40,
                                      "siblings": [{"rfilename": f} for f in sorted(r.files)]})

        routes = [
            (r"POST /api/repos/create", Handler.create_repo),
            (r"POST /api/validate-yaml", Handler.validate_yaml),
            (rf"POST /api/models/{REPO}/preupload/(?P<rev>[^/]+)", Handler.preupload),
            (rf"POST /{REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
            (r"PUT /lfs-upload/(?P<oid>[0-9a-f]{64})", Handler.lfs_put),
            (rf"POST /{REPO}\.git/info/lfs/objects/verify", Handler.lfs_verify),
            (rf"POST /api/models/{REPO}/commit/(?P<rev>[^/]+)", Handler.commit),
            (rf"GET /api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", Handler.repo_info),
        ]
        return Handler
