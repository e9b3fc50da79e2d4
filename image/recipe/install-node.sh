#!/bin/sh
# Install the node into the extracted base root ($1), run as root on the build host:
# the venv with the node's wheel and its pinned wheels (offline), the service user, units, udev
# rules, mounts, network and the release public key. Inputs: KMSNODE_WHEELS, KMSNODE_PUBKEY,
# KMSNODE_RECIPE. Needs /dev/null and /proc only for pip; bind-mounted by image/build.py.
set -eu
R="$1"
W="$KMSNODE_WHEELS"; r="$KMSNODE_RECIPE"
# Python venv with the node and its pinned wheels, installed offline.
cp -r "$W" "$R/tmp/wheels"
chroot "$R" python3 -m venv --without-pip /opt/kmsnode
chroot "$R" sh -c 'PIP=$(ls /tmp/wheels/pip-*.whl)
  /opt/kmsnode/bin/python "$PIP/pip" install -q --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/wheels kmsnode'
rm -rf "$R/tmp/wheels"
# Recipe: users, units, udev rules, mounts, network, HSM config, update key.
install -D -m 0644 "$r/kmsnode.sysusers" "$R/usr/lib/sysusers.d/kmsnode.conf"
chroot "$R" systemd-sysusers /usr/lib/sysusers.d/kmsnode.conf
U="$R/usr/lib/systemd/system"
install -D -m 0644 "$r/kmsnode.service" "$U/kmsnode.service"
install -D -m 0644 "$r/kmsnode-firstboot.service" "$U/kmsnode-firstboot.service"
install -D -m 0755 "$r/kmsnode-firstboot" "$R/usr/libexec/kmsnode/kmsnode-firstboot"
install -D -m 0644 "$r/70-kmsnode-hsm.rules" "$R/usr/lib/udev/rules.d/70-kmsnode-hsm.rules"
install -D -m 0644 "$r/80-kmsnode.network" "$R/usr/lib/systemd/network/80-kmsnode.network"
install -D -m 0644 "$r/fstab" "$R/etc/fstab"
install -D -m 0644 "$KMSNODE_PUBKEY" "$R/usr/share/kmsnode/update-keys/release.pub"
install -d -m 0755 "$R/var/lib/kmsnode"
echo kmsnode > "$R/etc/hostname"
chroot "$R" systemctl enable kmsnode.service kmsnode-firstboot.service systemd-networkd.service
