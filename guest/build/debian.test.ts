import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { guestAptSources, mmdebstrapArgv, mountPointsUnder, parseAptSources, withAppUser } from './debian.ts';

const HOST_DEB822 = `Types: deb
# a comment between fields
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: https://vendor.example/apt
Suites: nodistro
Components: main
`;

describe('apt sources', () => {
  it('keeps only the host\'s bookworm, -updates and -security binary sources', () => {
    const text = guestAptSources(parseAptSources(HOST_DEB822, 'deb822'), 'bookworm');
    assert.equal(
      text,
      [
        'Types: deb',
        'URIs: http://mirror.example/debian',
        'Suites: bookworm bookworm-updates',
        'Components: main contrib',
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
        '',
        'Types: deb',
        'URIs: http://mirror.example/debian-security',
        'Suites: bookworm-security',
        'Components: main',
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
        '',
      ].join('\n'),
    );
  });

  it('reads one-line sources.list entries with options', () => {
    const sources = parseAptSources(
      [
        '# deb http://commented.example/debian bookworm main',
        'deb [arch=amd64 signed-by=/etc/apt/k.gpg] http://mirror.example/debian bookworm main non-free-firmware',
        'deb-src http://mirror.example/debian bookworm main',
        'deb http://mirror.example/debian-security bookworm-security main # trailing comment',
      ].join('\n'),
      'one-line',
    );
    assert.deepEqual(sources, [
      { types: ['deb'], uris: ['http://mirror.example/debian'], suites: ['bookworm'], components: ['main', 'non-free-firmware'], signedBy: '/etc/apt/k.gpg' },
      { types: ['deb-src'], uris: ['http://mirror.example/debian'], suites: ['bookworm'], components: ['main'] },
      { types: ['deb'], uris: ['http://mirror.example/debian-security'], suites: ['bookworm-security'], components: ['main'] },
    ]);
    assert.match(guestAptSources(sources, 'bookworm'), /Suites: bookworm\n[\s\S]*Suites: bookworm-security\n/);
  });

  it('gives nothing when the host has no source for the suite', () => {
    assert.equal(guestAptSources(parseAptSources('deb http://mirror.example/debian trixie main\n', 'one-line'), 'bookworm'), '');
  });

  it('passes the sources on standard input, never a mirror name', () => {
    const argv = mmdebstrapArgv({ suite: 'bookworm', treeDir: '/x/tree' });
    assert.deepEqual(argv.slice(-3), ['bookworm', '/x/tree', '-']);
    assert.ok(argv.includes('--variant=minbase'));
    assert.ok(argv.includes('--include=python3,ca-certificates,curl,procps,iproute2'));
    assert.ok(!argv.some((arg) => arg.includes('://')));
  });
});

describe('withAppUser', () => {
  const base = {
    passwd: 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n',
    group: 'root:x:0:\nnogroup:x:65534:\n',
    shadow: 'root:*:19000:0:99999:7:::\n',
    gshadow: 'root:*::\n',
  };

  it('adds app with uid and gid 1000, once', () => {
    const once = withAppUser(base);
    assert.match(once.passwd, /\napp:x:1000:1000:app:\/app:\/bin\/sh\n$/);
    assert.match(once.group, /\napp:x:1000:\n$/);
    assert.match(once.shadow, /\napp:!:/);
    assert.match(once.gshadow, /\napp:!::\n$/);
    assert.deepEqual(withAppUser(once), once);
  });

  it('refuses when another account holds uid 1000', () => {
    assert.throws(() => withAppUser({ ...base, passwd: `${base.passwd}someone:x:1000:1000::/home/someone:/bin/sh\n` }), /1000/);
  });
});

describe('mountPointsUnder', () => {
  const mountinfo = [
    '22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw',
    '90 22 0:5 / /work/build/guest/tree.tmp-1/proc rw - proc proc rw',
    '91 22 0:6 / /work/build/guest/tree.tmp-1/dev\\040x rw - devtmpfs udev rw',
    '92 22 0:7 / /work/build/guest/tree.tmp-10 rw - tmpfs tmpfs rw',
  ].join('\n');

  it('finds mounts inside a directory, unescaping names, and not in its siblings', () => {
    assert.deepEqual(mountPointsUnder(mountinfo, '/work/build/guest/tree.tmp-1'), [
      '/work/build/guest/tree.tmp-1/proc',
      '/work/build/guest/tree.tmp-1/dev x',
    ]);
    assert.deepEqual(mountPointsUnder(mountinfo, '/work/build/guest/other/'), []);
  });
});
