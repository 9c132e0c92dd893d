# Test-fixture derivations for scripts/make-fixture.sh. No nixpkgs needed:
# every builder is /bin/sh (run without a sandbox, so host tools are called
# by absolute path). Closure: fixture-top -> fixture-mid -> fixture-base.
# Each builder prints to stdout and stderr so a build log exists.
let
  sh = args: name: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" args ];
  };

  # Leaf: a small text file, a nested directory, an empty file and an
  # empty directory.
  base = sh ''
    set -e
    echo "building fixture-base (stdout)"
    echo "building fixture-base (stderr)" >&2
    /bin/mkdir -p $out/share/doc $out/empty-dir
    echo "fixture base data" > $out/share/doc/README
    : > $out/share/empty-file
    echo "fixture-base done"
  '' "fixture-base";

  # Middle: an executable that refers to base (=> reference mid -> base).
  mid = sh ''
    set -e
    echo "building fixture-mid (stdout)"
    echo "building fixture-mid (stderr)" >&2
    /bin/mkdir -p $out/bin
    /bin/cat > $out/bin/mid-tool <<EOF
    #!/bin/sh
    # refers to ${base}
    exec /bin/cat ${base}/share/doc/README
    EOF
    /bin/chmod 0755 $out/bin/mid-tool
    echo "fixture-mid done"
  '' "fixture-mid";

  # Top: executable script, relative + absolute symlinks, a file whose name
  # contains a space, and a ~3 MB deterministic pseudo-random-ish text file
  # (Park-Miller LCG in mawk; 12 bits of noise per 22-byte line, so it
  # compresses to a few hundred kB, not trivially).
  top = sh ''
    set -e
    echo "building fixture-top (stdout)"
    echo "building fixture-top (stderr)" >&2
    /bin/mkdir -p $out/bin $out/share/data
    /bin/cat > $out/bin/hello <<EOF
    #!/bin/sh
    echo "hello from fixture-top"
    exec ${mid}/bin/mid-tool "\$@"
    EOF
    /bin/chmod 0755 $out/bin/hello
    /bin/ln -s bin/hello $out/hello-link
    /bin/ln -s ${mid}/bin/mid-tool $out/bin/mid-tool-link
    echo "a file whose name contains a space" > "$out/share/data/hello world.txt"
    /usr/bin/awk 'BEGIN {
      s = 42;
      for (i = 0; i < 143000; i++) {
        s = (s * 16807) % 2147483647;
        printf "line %07d noise %03x\n", i, s % 4096;
      }
    }' > $out/share/data/big.txt
    echo "big.txt: $(/usr/bin/wc -c < $out/share/data/big.txt) bytes"
    echo "fixture-top done"
  '' "fixture-top";
in
top
