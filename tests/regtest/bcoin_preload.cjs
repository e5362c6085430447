'use strict';
// Preloaded with `node -r` before bcoin 1.0.2 (installed with `npm install --ignore-scripts`, so no
// native add-on is built). Two changes, both made at module load, nothing in node_modules is edited:
//
// 1. `require('leveldown')` returns a constructor that throws. bdb requires leveldown when it loads,
//    even with --memory=true; its native binding was never built. The node must run in memory.
// 2. Regtest as Bitcoin Core has it for coinbase heights: Core enforces BIP34 from height 1 on regtest,
//    bcoin 1.0.2's regtest never does (bip34height = 100000000). With bip34height = 1 bcoin checks every
//    block's coinbase height (minimal push, OP_1..OP_16 for 1..16) exactly as Core does.
//
// Pure-JS backends for the rest: start node with NODE_BACKEND=js.
const Module = require('module');
const path = require('path');

const originalLoad = Module._load;
const networksFile = path.join('bcoin', 'lib', 'protocol', 'networks.js');

function LevelDOWN() {
  throw new Error('on-disk database unavailable; run with --memory');
}

Module._load = function load(request, parent, isMain) {
  if (request === 'leveldown')
    return LevelDOWN;
  const exported = originalLoad.apply(this, arguments);
  if (exported && exported.regtest && exported.regtest.block) {
    let file = '';
    try {
      file = Module._resolveFilename(request, parent, isMain);
    } catch (e) {
      file = '';
    }
    if (file.endsWith(networksFile))
      exported.regtest.block.bip34height = 1;
  }
  return exported;
};
