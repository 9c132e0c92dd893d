# Fresh store paths for the nix copy loop of scripts/soak.sh: no nixpkgs, every builder is
# /bin/sh (run without a sandbox, so host tools are called by absolute path). `nonce` makes the
# paths new on every iteration; `size` bytes of random data make each NAR a different size.
# Closure: soak-top-NONCE -> soak-leaf-NONCE.
{ nonce, size }:
let
  sh = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  leaf = sh "soak-leaf-${nonce}" ''
    set -e
    echo "building soak-leaf ${nonce}"
    /bin/mkdir -p $out/share
    /usr/bin/head -c ${size} /dev/urandom > $out/share/random.bin
    /usr/bin/seq 1 2000 > $out/share/lines.txt
  '';
in
sh "soak-top-${nonce}" ''
  set -e
  echo "building soak-top ${nonce}"
  /bin/mkdir -p $out/bin
  /bin/cat > $out/bin/show <<EOF
  #!/bin/sh
  exec /usr/bin/wc -c ${leaf}/share/random.bin
  EOF
  /bin/chmod 0755 $out/bin/show
  /bin/ln -s ${leaf}/share $out/share
''
