// dcnviz explore: the page's script. It reads the data block written by dcnviz.viz.explore and draws,
// for the unit under the cursor, its composed sampling points through the chosen deformable layers.
//
// The sampling arithmetic mirrors dcnviz.analysis.sampling.sampling_locations operation for operation
// (same tap order, same bilinear read with border-replicated positions, same "inside"/"valid" rules, the
// same float64 arithmetic on the same float32 offsets), so the points equal `dcnviz offsets --at X,Y`.
// Coordinates: feature positions (y, x) in cells, integers at cell centres; image positions (x, y) in
// original-image pixels, pixel k covering [k, k+1); image = (feature + 0.5) * stride / scale.
//
// DOM contract (tests and scripts rely on it): every drawn sampling point is an SVG element with class
// "dcnviz-point" and data-x, data-y (image pixels); the unit marker has class "dcnviz-unit" with data-x,
// data-y; detection boxes have class "dcnviz-detection" with data-index (score order); RoI parts have
// class "dcnviz-part"; document.body.dataset.ready is "1" once the page can be used.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const DATA = JSON.parse(document.getElementById("dcnviz-data").textContent);
  // Deformable group g of "all" is drawn in colour g % 5 (classes g0..g4 of the style sheet: red, blue,
  // magenta, orange, white, as dcnviz.viz.sampling.GROUP_COLORS).
  const COLOURS = 5;

  // ---------------------------------------------------------------- offsets and sampling (the analysis)

  function decodeFloat32(b64) {
    // Little-endian float32, as numpy wrote it (every browser platform is little-endian). A plain loop over
    // atob's string where the native decoder is missing: Uint8Array.from with a map function is 10x slower.
    let bytes;
    if (Uint8Array.fromBase64) {
      bytes = Uint8Array.fromBase64(b64);
    } else {
      const text = atob(b64);
      bytes = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    }
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  }

  // One layer's offsets as G fields of (K, 2, Ho, Wo): channel g*2K + 2k is dy, + 1 is dx of tap k
  // (the official layout, dcnviz.analysis._common.split_offset). Decoded on first use.
  function layerFields(layer) {
    if (!layer.fields) {
      const values = decodeFloat32(layer.offsets);
      const per = 2 * layer.kernel[0] * layer.kernel[1] * layer.map[0] * layer.map[1];
      layer.fields = [];
      for (let g = 0; g < layer.groups; g++) layer.fields.push(values.subarray(g * per, (g + 1) * per));
    }
    return layer.fields;
  }

  // The group-averaged field (sampling_locations' group="mean"): numpy's mean over axis 0 adds the groups
  // in order, then divides by their count.
  function meanField(layer) {
    if (!layer.mean) {
      const fields = layerFields(layer);
      const out = new Float64Array(fields[0].length);
      for (const f of fields) for (let i = 0; i < out.length; i++) out[i] += f[i];
      for (let i = 0; i < out.length; i++) out[i] /= fields.length;
      layer.mean = out;
    }
    return layer.mean;
  }

  function geometry(g) {
    return { kh: g.kernel[0], kw: g.kernel[1], dh: g.dilation[0], dw: g.dilation[1], ph: g.padding[0],
             pw: g.padding[1], sh: g.stride[0], sw: g.stride[1] };
  }

  // Input map size of the bottom layer of a stack: as recorded (your own models), else derived from its
  // output (offset) map as sampling_locations derives it; null when its stride is not 1 (not determined).
  function bottomInputSize(layer) {
    if (layer.input_size) return layer.input_size;
    const geom = geometry(layer), map = layer.map;
    if (geom.sh !== 1 || geom.sw !== 1) return null;
    return [map[0] - 2 * geom.ph + geom.dh * (geom.kh - 1), map[1] - 2 * geom.pw + geom.dw * (geom.kw - 1)];
  }

  // Whether `upper` reads the output of `lower`: its size formula (LayerGeometry.output_size) turns
  // lower's map into its own, and its recorded input size, if any, is lower's map.
  function composes(lower, upper) {
    const g = geometry(upper), n = lower.map;
    const out = [Math.floor((n[0] + 2 * g.ph - (g.dh * (g.kh - 1) + 1)) / g.sh) + 1,
                 Math.floor((n[1] + 2 * g.pw - (g.dw * (g.kw - 1) + 1)) / g.sw) + 1];
    const input = upper.input_size;
    return out[0] === upper.map[0] && out[1] === upper.map[1] && (!input || (input[0] === n[0] && input[1] === n[1]));
  }

  // Whether position (y, x) of an H x W map reads a non-zero bilinear value by a layer's boundary rule
  // (sampling.inside_rule): "dcnv1" (dcnviz.ops, the official models) or "dcnv2" (torchvision).
  function insideRule(boundary, ty, tx, H, W) {
    return boundary === "dcnv2" ? ty > -1 && ty < H && tx > -1 && tx < W : ty >= 0 && ty < H && tx >= 0 && tx < W;
  }

  // numpy.round: halves to even.
  function roundHalfEven(v) {
    const r = Math.round(v);
    return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }

  // Offsets (dy, dx) of every tap at feature position (y, x) into out[2k], out[2k + 1]: bilinear over the
  // four surrounding cells, the position clipped to the map first (dcnviz.analysis.sampling._read).
  // field is null for a plain conv (zero offsets).
  function readOffsets(field, K, ho, wo, y, x, out) {
    if (field === null) { out.fill(0); return; }
    y = Math.min(Math.max(y, 0), ho - 1);
    x = Math.min(Math.max(x, 0), wo - 1);
    const y0 = Math.floor(y), x0 = Math.floor(x);
    const y1 = Math.min(y0 + 1, ho - 1), x1 = Math.min(x0 + 1, wo - 1);
    const ly = y - y0, lx = x - x0;
    const w00 = (1 - ly) * (1 - lx), w01 = (1 - ly) * lx, w10 = ly * (1 - lx), w11 = ly * lx;
    const plane = ho * wo;
    const i00 = y0 * wo + x0, i01 = y0 * wo + x1, i10 = y1 * wo + x0, i11 = y1 * wo + x1;
    for (let c = 0; c < 2 * K; c++) {
      const b = c * plane;
      out[c] = field[b + i00] * w00 + field[b + i01] * w01 + field[b + i10] * w10 + field[b + i11] * w11;
    }
  }

  // Composed sampling points of top-layer cell `unit` (i, j) through `levels` (top first: {field, geom,
  // map, inputSize}). Returns {points: Float64Array (M*2, (y, x) per point), inside, valid: Uint8Array (M)},
  // points in the bottom layer's input map, point m descending through taps k_0 (top) ... k_{L-1}.
  function sample(levels, unit, nearest) {
    let points = Float64Array.of(unit[0], unit[1]);
    let valid = Uint8Array.of(1);
    let inside = valid;
    for (const level of levels) {
      const g = level.geom, K = g.kh * g.kw, P = valid.length;
      const next = new Float64Array(P * K * 2), nextValid = new Uint8Array(P * K), nextInside = new Uint8Array(P * K);
      const off = new Float64Array(2 * K);
      const [H, W] = level.inputSize;
      for (let p = 0; p < P; p++) {
        const by = nearest ? roundHalfEven(points[2 * p]) : points[2 * p];
        const bx = nearest ? roundHalfEven(points[2 * p + 1]) : points[2 * p + 1];
        readOffsets(level.field, K, level.map[0], level.map[1], by, bx, off);
        for (let i = 0; i < g.kh; i++) {
          for (let j = 0; j < g.kw; j++) {
            const k = i * g.kw + j, m = p * K + k;
            // (base * stride + (tap - padding)) + offset: the order sampling._expand adds them in
            const ty = by * g.sh + (i * g.dh - g.ph) + off[2 * k];
            const tx = bx * g.sw + (j * g.dw - g.pw) + off[2 * k + 1];
            next[2 * m] = ty;
            next[2 * m + 1] = tx;
            const ins = insideRule(level.boundary, ty, tx, H, W);
            nextInside[m] = ins ? 1 : 0;
            nextValid[m] = valid[p] && ins ? 1 : 0;
          }
        }
      }
      points = next; valid = nextValid; inside = nextInside;
    }
    return { points, inside, valid };
  }

  // Effective dilation of one filter (dcnviz.analysis.dilation.effective_dilation): the mean distance of
  // horizontally and vertically adjacent taps, in cells of the layer's input map, at an integer cell.
  function effectiveDilation(field, geomRaw, map, cell) {
    const g = geometry(geomRaw), K = g.kh * g.kw;
    const off = new Float64Array(2 * K);
    readOffsets(field, K, map[0], map[1], cell[0], cell[1], off);
    const ty = (i, j) => i * g.dh + off[2 * (i * g.kw + j)];
    const tx = (i, j) => j * g.dw + off[2 * (i * g.kw + j) + 1];
    let total = 0;
    for (let i = 0; i < g.kh; i++) for (let j = 0; j + 1 < g.kw; j++) total += Math.hypot(ty(i, j + 1) - ty(i, j), tx(i, j + 1) - tx(i, j));
    for (let i = 0; i + 1 < g.kh; i++) for (let j = 0; j < g.kw; j++) total += Math.hypot(ty(i + 1, j) - ty(i, j), tx(i + 1, j) - tx(i, j));
    return total / (g.kh * (g.kw - 1) + (g.kh - 1) * g.kw);
  }

  // ---------------------------------------------------------------- state

  const W = DATA.image.width, H = DATA.image.height, SCALE = DATA.image.scale;
  const LAYERS = DATA.layers;  // forward order (res5a, res5b, res5c)
  const byName = Object.fromEntries(LAYERS.map((l, i) => [l.name, i]));
  const state = {
    layer: byName[DATA.default_layer],
    levels: 0,
    group: "0",
    nearest: false,
    unit: null,        // [i, j] in the top layer's map
    pinned: false,
    selected: null,    // detection index whose RoI parts are shown
    showPrediction: true,
    effective: false,  // shade by the precomputed effective weights (--effective-at) where there are some
  };
  state.levels = Math.min(DATA.default_levels, maxLevels(state.layer));

  // How many levels can go down from layer index `top`: consecutive layers that compose (each reads the
  // output of the one below; FPN DCN's res5a does not: it reads res4b22 through a strided 1x1 conv), as
  // long as the bottom one's input size is known.
  function maxLevels(top) {
    let n = 0;
    for (let l = top; l >= 0; l--) {
      if (l < top && !composes(LAYERS[l], LAYERS[l + 1])) break;
      if (bottomInputSize(LAYERS[l]) !== null) n = top - l + 1;
    }
    return n;
  }

  function groupCount() { return LAYERS[state.layer].groups; }

  // The stack of the current layer and levels, top first, for one field choice per layer.
  function stack(fieldOf, geomOf) {
    const levels = [];
    for (let l = 0; l < state.levels; l++) {
      const layer = LAYERS[state.layer - l];
      levels.push({ field: fieldOf(layer), geom: geometry(geomOf(layer)), map: layer.map, boundary: layer.boundary,
                    inputSize: l + 1 < state.levels ? LAYERS[state.layer - l - 1].map : bottomInputSize(layer) });
    }
    return levels;
  }

  // The variants to draw: one per followed group ("all": every group in its colour).
  function variants() {
    if (state.group === "mean") return [{ group: "mean", fieldOf: (layer) => meanField(layer) }];
    const groups = state.group === "all" ? [...Array(groupCount()).keys()] : [Number(state.group)];
    return groups.map((g) => ({ group: g, fieldOf: (layer) => layerFields(layer)[g] }));
  }

  const topStride = () => LAYERS[state.layer].feature_stride;
  // image pixels of the points: the stride of the bottom layer's INPUT map (LayerRecord.input_stride)
  const bottomStride = () => {
    const bottom = LAYERS[state.layer - state.levels + 1];
    return bottom.feature_stride / bottom.stride[0];
  };
  const toImage = (v, stride) => (v + 0.5) * (stride / SCALE);

  // The cell of the top layer's map holding image position (x, y) (dcnviz.analysis.units.units_at).
  function cellAt(x, y) {
    const map = LAYERS[state.layer].map, f = SCALE / topStride();
    return [Math.min(Math.max(Math.floor(y * f), 0), map[0] - 1), Math.min(Math.max(Math.floor(x * f), 0), map[1] - 1)];
  }

  // ---------------------------------------------------------------- drawing

  const $ = (id) => document.getElementById(id);
  const svgMain = $("dcnviz-view"), svgPlain = $("dcnviz-plain-view");

  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function escapeText(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  // Extension point: functions (point) -> {attribute: value} set on every drawn point, for views that
  // shade points by more than position (point = {x, y, index, group, inside, valid, levels}).
  const pointAttributes = [];

  // The point elements are a pool per layer, reused from hover to hover: a hover sets the attributes that
  // changed, in one pass of writes with no layout read in between, and parks the surplus (hidden, without
  // the dcnviz-point class) for the next hover that needs more. Re-creating 729 elements per hover cost
  // more than the sampling itself; class and geometry writes are what make the browser restyle an
  // element, so a class equal to the last one is not written again.
  const SPARE = "dcnviz-spare";

  function pooled(pool, layer, i) {
    if (i < pool.length) return pool[i];
    const c = layer.appendChild(document.createElementNS(SVG_NS, "circle"));
    c.dcnviz = { cls: "", index: -1, group: null, inside: -1 };
    pool.push(c);
    return c;
  }

  function park(pool, used) {
    for (let i = used; i < pool.length && pool[i].dcnviz.cls !== SPARE; i++) {
      pool[i].setAttribute("class", SPARE);
      pool[i].dcnviz.cls = SPARE;
    }
  }

  function setPoint(e, cls, x, y, m, group, inside) {
    const last = e.dcnviz;
    if (last.cls !== cls) { e.setAttribute("class", cls); last.cls = cls; }
    // the same string for the position and its data attribute: one number formatting each
    const sx = String(x), sy = String(y);
    e.setAttribute("cx", sx);
    e.setAttribute("cy", sy);
    e.setAttribute("data-x", sx);
    e.setAttribute("data-y", sy);
    if (last.index !== m) { e.setAttribute("data-index", m); last.index = m; }
    if (last.group !== group) { e.setAttribute("data-group", group); last.group = group; }
    if (last.inside !== inside) { e.setAttribute("data-inside", inside); last.inside = inside; }
  }

  // Points of every variant in image pixels; hollow ones are drawn under filled ones. `colour` is the
  // index of the variant's colour (classes g0..g4 in the style sheet).
  function drawPoints(svg, cls, results, stride) {
    const layers = [svg.querySelector(".dcnviz-points-hollow"), svg.querySelector(".dcnviz-points-filled")];
    const pools = svg.dcnvizPools || (svg.dcnvizPools = [[], []]);
    const used = [0, 0];
    const f = stride / SCALE;
    for (const { group, colour, found } of results) {
      // data-valid is implied by the layer and set with the class (they change together)
      const classes = [`${cls} g${colour} dcnviz-hollow`, `${cls} g${colour}`];
      const M = found.valid.length;
      for (let m = 0; m < M; m++) {
        const valid = found.valid[m];
        const x = (found.points[2 * m + 1] + 0.5) * f, y = (found.points[2 * m] + 0.5) * f;
        const e = pooled(pools[valid], layers[valid], used[valid]++);
        if (e.dcnviz.cls !== classes[valid]) e.setAttribute("data-valid", valid);
        setPoint(e, classes[valid], x, y, m, group, found.inside[m]);
        if (pointAttributes.length) {
          const p = { x, y, index: m, group, inside: found.inside[m], valid, levels: state.levels };
          for (const extra of pointAttributes) {
            for (const [k, v] of Object.entries(extra(p))) e.setAttribute(k, v);
          }
        }
      }
    }
    park(pools[0], used[0]);
    park(pools[1], used[1]);
  }

  function drawUnit(svg, cls, xy) {
    const g = svg.querySelector(".dcnviz-unit-layer");
    // a zero-length path with square caps: a square of fixed screen size, whatever the zoom
    const d = xy === null ? "" : `M${xy[0]} ${xy[1]}h0`;
    g.innerHTML = xy === null ? "" : `<g class="${cls}" data-x="${xy[0]}" data-y="${xy[1]}">` +
      `<path class="rim" d="${d}"/><path class="mark" d="${d}"/></g>`;
  }

  // The precomputed effective sampling locations of the current unit, or null (not asked for, another
  // layer, no such unit).
  function effectiveHere() {
    if (!state.effective || state.unit === null || state.layer !== byName[DATA.default_layer]) return null;
    return DATA.effective.find((e) => e.cell[0] === state.unit[0] && e.cell[1] === state.unit[1]) || null;
  }

  // The effective sampling locations of `node` through the chosen levels (node layer first in the data,
  // drawn last), of the chosen group (every group for "all" and "mean"), each point where it samples in
  // its weight's colour and opacity; zero-weight taps of the node layer hollow. Not the hover path (only
  // a few units have them), so the elements are made afresh.
  function drawEffective(node) {
    const g = effectiveGroup();
    g.replaceChildren();
    let count = 0;
    const layers = node.layers.slice(0, state.levels);
    for (let level = layers.length - 1; level >= 0; level--) {
      const L = layers[level];
      for (let m = 0; m < L.weight.length; m++) {
        if (typeof state.group === "string" && /^\d+$/.test(state.group) && L.groups[m] !== Number(state.group)) continue;
        const x = L.xy[2 * m], y = L.xy[2 * m + 1], w = L.weight[m];
        el("circle", { class: `dcnviz-point dcnviz-weighted${level === 0 ? " dcnviz-node-layer" : ""}${w > 0 ? "" : " dcnviz-hollow"}`,
                       cx: x, cy: y, "data-x": x, "data-y": y, "data-level": level, "data-layer": L.name, "data-index": m,
                       "data-group": L.groups[m], "data-inside": L.inside[m], "data-valid": L.inside[m],
                       "data-weight": w, style: `--c:${L.color[m]};opacity:${L.opacity[m]}` }, g);
        count++;
      }
    }
    return { count, layers: layers.map((l) => l.name) };
  }

  function effectiveGroup() {
    return svgMain.querySelector(".dcnviz-points-effective") ||
      el("g", { class: "dcnviz-points-effective" }, svgMain.querySelector(".dcnviz-points"));
  }

  function render() {
    const top = LAYERS[state.layer];
    const readout = $("dcnviz-readout");
    if (state.unit === null) {
      for (const svg of [svgMain, svgPlain]) {
        if (!svg) continue;
        drawPoints(svg, "", [], 1);
        drawUnit(svg, "", null);
      }
      effectiveGroup().replaceChildren();
      readout.textContent = "Move the mouse over the image.";
      return;
    }
    const unitXY = [toImage(state.unit[1], topStride()), toImage(state.unit[0], topStride())];
    const results = variants().map((v) => ({
      group: v.group,
      colour: v.group === "mean" ? 0 : v.group % COLOURS,
      found: sample(stack(v.fieldOf, (layer) => layer), state.unit, state.nearest),
      dilation: effectiveDilation(v.fieldOf(top), top, top.map, state.unit),
    }));
    const node = effectiveHere();
    const weighted = node === null ? null : drawEffective(node);
    if (node === null) effectiveGroup().replaceChildren();
    svgMain.classList.toggle("dcnviz-effective-on", node !== null);
    drawPoints(svgMain, "dcnviz-point", node === null ? results : [], bottomStride());
    drawUnit(svgMain, "dcnviz-unit", unitXY);
    if (svgPlain) {
      const plain = sample(stack(() => null, (layer) => DATA.plain.layers[byName[layer.name]]), state.unit, state.nearest);
      drawPoints(svgPlain, "dcnviz-plain-point", [{ group: 0, colour: 0, found: plain }], bottomStride());
      drawUnit(svgPlain, "dcnviz-plain-unit", unitXY);
    }
    const count = results.reduce((n, r) => n + r.found.valid.length, 0);
    const valid = results.reduce((n, r) => n + r.found.valid.reduce((a, b) => a + b, 0), 0);
    const dil = results.map((r) => r.dilation);
    const dilText = results.length === 1 ? dil[0].toFixed(2)
      : results.map((r) => `g${r.group} ${r.dilation.toFixed(2)}`).join(", ");
    const nominal = top.dilation[0] === top.dilation[1] ? top.dilation[0] : top.dilation.join("x");
    readout.innerHTML =
      `<div>unit: cell (${state.unit[0]}, ${state.unit[1]}) of ${escapeText(top.name)} (${top.map[0]}x${top.map[1]})` +
      `${state.pinned ? " <b>pinned</b>" : ""}</div>` +
      `<div>at image (${unitXY[0].toFixed(1)}, ${unitXY[1].toFixed(1)}) px</div>` +
      (weighted !== null ? `<div id="dcnviz-effective-readout">effective weights: ${weighted.count} points of ` +
        `${escapeText(weighted.layers.join(" > "))}</div>` : `<div>${count} points, ${count - valid} hollow</div>`) +
      (state.effective && weighted === null ? "<div>no effective weights at this unit (see the list)</div>" : "") +
      `<div id="dcnviz-dilation" data-value="${dil.reduce((a, b) => a + b, 0) / dil.length}">effective dilation of ` +
      `${escapeText(top.name)}: ${dilText} cells (nominal ${nominal})</div>`;
  }

  function drawDetections() {
    const g = svgMain.querySelector(".dcnviz-detections");
    g.innerHTML = "";
    const list = $("dcnviz-detection-list");
    if (list) list.innerHTML = "";
    DATA.detections.forEach((d, i) => {
      const [x1, y1, x2, y2] = d.box;
      const group = el("g", { class: "dcnviz-detection", "data-index": i, "data-class": d.class_name,
                              "data-score": d.score, style: `--c:${d.color}` }, g);
      // inclusive corners: the box covers pixels x1..x2, i.e. edges [x1, x2 + 1)
      el("rect", { x: x1, y: y1, width: x2 - x1 + 1, height: y2 - y1 + 1, class: "dcnviz-box" }, group);
      const label = el("text", { x: x1, y: y1, class: "dcnviz-label" }, group);
      label.textContent = `${d.class_name} ${d.score.toFixed(2)}`;
      if (list) {
        const item = document.createElement("li");
        item.className = "dcnviz-detection-item";
        item.dataset.index = i;
        item.innerHTML = `<span class="swatch" style="background:${d.color}"></span>${escapeText(label.textContent)}`;
        item.addEventListener("click", () => selectDetection(state.selected === i ? null : i));
        list.appendChild(item);
      }
    });
  }

  function drawParts() {
    const g = svgMain.querySelector(".dcnviz-parts");
    g.innerHTML = "";
    document.querySelectorAll(".dcnviz-detection-item").forEach((item) => {
      item.classList.toggle("selected", Number(item.dataset.index) === state.selected);
    });
    const caption = $("dcnviz-parts-caption");
    if (state.selected === null) { if (caption) caption.textContent = ""; return; }
    const d = DATA.detections[state.selected];
    if (!d.parts) {
      if (caption) caption.textContent = "This model has no deformable PS RoI pooling: no parts to show.";
      return;
    }
    const edges = (r) => ({ x: r[0], y: r[1], width: r[2] - r[0], height: r[3] - r[1] });
    el("rect", { ...edges(d.parts.roi), class: "dcnviz-roi", "data-index": state.selected }, g);
    d.parts.bins.forEach((row, ph) => row.forEach((r, pw) => {
      el("rect", { ...edges(r), class: "dcnviz-part", "data-row": ph, "data-col": pw, "data-x1": r[0],
                   "data-y1": r[1], "data-x2": r[2], "data-y2": r[3] }, g);
    }));
    const label = el("text", { x: d.parts.roi[0], y: d.parts.roi[1], class: "dcnviz-label dcnviz-roi-label" }, g);
    label.textContent = `${d.class_name} ${d.parts.prob.toFixed(2)}`;
    if (caption) {
      caption.textContent = `Detection ${state.selected + 1}: the RoI as pooled (yellow) and its ` +
        `${d.parts.bins.length}x${d.parts.bins.length} parts moved by the ${d.class_name} offsets ` +
        `x trans_std ${DATA.part_geometry.trans_std} (red); ${d.class_name} probability on this RoI ` +
        `${d.parts.prob.toFixed(2)}.`;
    }
  }

  function selectDetection(i) {
    state.selected = i;
    drawParts();
  }

  // Marker and label sizes are given in screen pixels: --k is image pixels per screen pixel. The points'
  // sizes are written as plain lengths into one rule per view (see explore.css).
  const scaleRules = document.head.appendChild(document.createElement("style"));

  function updateScale() {
    let rules = "";
    for (const svg of [svgMain, svgPlain]) {
      if (!svg) continue;
      const ctm = svg.getScreenCTM();
      if (!ctm || !(ctm.a > 0)) continue;
      const k = 1 / ctm.a, points = `#${svg.id} .dcnviz-point, #${svg.id} .dcnviz-plain-point`;
      svg.style.setProperty("--k", String(k));
      rules += `${points} { r: ${2.6 * k}px; stroke-width: ${0.8 * k}px; }\n` +
        `${points.replace(/point/g, "point.dcnviz-hollow")} { stroke-width: ${1.3 * k}px; }\n` +
        `#${svg.id} .dcnviz-weighted { r: ${2 * k}px; stroke-width: ${0.5 * k}px; }\n` +
        `#${svg.id} .dcnviz-weighted.dcnviz-node-layer { r: ${3.6 * k}px; stroke-width: ${0.8 * k}px; }\n`;
    }
    scaleRules.textContent = rules;
  }

  // ---------------------------------------------------------------- controls and events

  function imagePosition(svg, event) {
    const ctm = svg.getScreenCTM();
    if (!ctm) return null;
    const pt = new DOMPoint(event.clientX, event.clientY).matrixTransform(ctm.inverse());
    return pt.x >= 0 && pt.x < W && pt.y >= 0 && pt.y < H ? [pt.x, pt.y] : null;
  }

  function setUnit(cell) {
    if (state.unit !== null && cell[0] === state.unit[0] && cell[1] === state.unit[1]) return;
    state.unit = cell;
    render();
  }

  function onMove(event) {
    if (state.pinned) return;
    const pos = imagePosition(event.currentTarget, event);
    if (pos !== null) setUnit(cellAt(pos[0], pos[1]));
  }

  // A click pins the unit there (or unpins it, clicking its own cell again) and shows the RoI parts of
  // the smallest shown detection under the click.
  function onClick(event) {
    const pos = imagePosition(event.currentTarget, event);
    if (pos === null) return;
    const cell = cellAt(pos[0], pos[1]);
    const same = state.unit !== null && state.unit[0] === cell[0] && state.unit[1] === cell[1];
    state.pinned = !(state.pinned && same);
    state.unit = null;
    setUnit(cell);
    if (svgMain.contains(event.target) || event.currentTarget === svgMain) {
      let best = null, bestArea = Infinity;
      if (state.showPrediction) {
        DATA.detections.forEach((d, i) => {
          const [x1, y1, x2, y2] = d.box;
          const area = (x2 - x1 + 1) * (y2 - y1 + 1);
          if (pos[0] >= x1 && pos[0] < x2 + 1 && pos[1] >= y1 && pos[1] < y2 + 1 && area < bestArea) {
            best = i; bestArea = area;
          }
        });
      }
      selectDetection(best);
    }
  }

  function onKey(event) {
    if (event.target.tagName === "SELECT" || event.target.tagName === "INPUT") return;
    const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[event.key];
    if (event.key === "Escape") {
      state.pinned = false;
      selectDetection(null);
      render();
      return;
    }
    if (!step) return;
    event.preventDefault();
    const map = LAYERS[state.layer].map;
    const from = state.unit === null ? [Math.floor(map[0] / 2), Math.floor(map[1] / 2)] : state.unit;
    state.pinned = true;  // the unit stays where the keys put it until the next click
    state.unit = null;
    setUnit([Math.min(Math.max(from[0] + step[0], 0), map[0] - 1), Math.min(Math.max(from[1] + step[1], 0), map[1] - 1)]);
  }

  function fillSelect(select, options, value) {
    select.innerHTML = "";
    for (const [v, text] of options) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = text;
      select.appendChild(o);
    }
    select.value = value;
  }

  function refreshControls() {
    const top = LAYERS[state.layer];
    fillSelect($("dcnviz-levels"), [...Array(maxLevels(state.layer)).keys()].map((n) => {
      const names = LAYERS.slice(state.layer - n, state.layer + 1).map((l) => l.name).reverse().join(" > ");
      const taps = LAYERS.slice(state.layer - n, state.layer + 1).reduce((a, l) => a * l.kernel[0] * l.kernel[1], 1);
      return [n + 1, `${n + 1}: ${names} (${taps} points)`];
    }), state.levels);
    const groups = [...Array(top.groups).keys()].map((g) => [String(g), `group ${g}`]);
    if (top.groups > 1) groups.push(["mean", "mean of the groups"], ["all", "all groups, one colour each"]);
    if (!groups.some(([v]) => v === state.group)) state.group = "0";
    fillSelect($("dcnviz-group"), groups, state.group);
    $("dcnviz-group").disabled = top.groups === 1;
    $("dcnviz-layer-name").textContent = LAYERS.slice(state.layer - state.levels + 1, state.layer + 1)
      .map((l) => l.name).reverse().join(" > ");
    updateLegend();
  }

  function updateLegend() {
    const groups = $("dcnviz-legend-groups");
    groups.innerHTML = "";
    if (state.group !== "all") return;
    for (let g = 0; g < groupCount(); g++) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="swatch g${g % COLOURS}"></span>group ${g}`;
      groups.appendChild(li);
    }
  }

  function setupEffective() {
    const box = $("dcnviz-effective"), list = $("dcnviz-effective-list");
    box.addEventListener("change", (e) => { state.effective = e.target.checked; render(); });
    DATA.effective.forEach((node) => {
      const item = document.createElement("li");
      item.className = "dcnviz-effective-item";
      item.textContent = `cell (${node.cell[0]}, ${node.cell[1]}) at (${node.xy[0].toFixed(1)}, ${node.xy[1].toFixed(1)}) px`;
      item.addEventListener("click", () => {
        // pin that unit in the layer the weights were computed for, shaded
        if (state.layer !== byName[DATA.default_layer]) {
          state.layer = byName[DATA.default_layer];
          state.levels = Math.min(DATA.default_levels, maxLevels(state.layer));
          refreshControls();
        }
        box.checked = state.effective = true;
        state.pinned = true;
        state.unit = null;
        setUnit(node.cell);
      });
      list.appendChild(item);
    });
  }

  function setup() {
    for (const svg of [svgMain, svgPlain]) {
      if (svg) svg.querySelector(".dcnviz-image").setAttribute("href", DATA.image.src);
    }
    const overlay = svgMain.querySelector(".dcnviz-overlay");
    if (DATA.segmentation) overlay.setAttribute("href", DATA.segmentation.overlay);
    else overlay.remove();
    fillSelect($("dcnviz-layer"), LAYERS.map((l, i) => [i, `${l.name} (${l.groups} group${l.groups > 1 ? "s" : ""}, ` +
      `${l.map[0]}x${l.map[1]})`]).filter(([i]) => maxLevels(i) > 0), state.layer);
    $("dcnviz-layer").addEventListener("change", (e) => {
      const keep = state.unit === null ? null : [toImage(state.unit[1], topStride()), toImage(state.unit[0], topStride())];
      state.layer = Number(e.target.value);
      state.levels = Math.min(DATA.default_levels, maxLevels(state.layer));
      refreshControls();
      state.unit = keep === null ? null : cellAt(keep[0], keep[1]);  // the same place in the new map
      render();
    });
    $("dcnviz-levels").addEventListener("change", (e) => { state.levels = Number(e.target.value); refreshControls(); render(); });
    $("dcnviz-group").addEventListener("change", (e) => { state.group = e.target.value; updateLegend(); render(); });
    $("dcnviz-round").addEventListener("change", (e) => { state.nearest = e.target.checked; render(); });
    if (!DATA.task) $("dcnviz-show-prediction-label").style.display = "none";  // nothing to show or hide
    if (DATA.effective.length) setupEffective();
    const toggle = $("dcnviz-show-prediction");
    toggle.addEventListener("change", (e) => {
      state.showPrediction = e.target.checked;
      svgMain.classList.toggle("hide-prediction", !state.showPrediction);
      if (!state.showPrediction) selectDetection(null);
    });
    for (const svg of [svgMain, svgPlain]) {
      if (!svg) continue;
      svg.addEventListener("mousemove", onMove);
      svg.addEventListener("click", onClick);
    }
    document.addEventListener("keydown", onKey);
    new ResizeObserver(updateScale).observe(svgMain);  // window resizes and layout changes alike
    refreshControls();
    drawDetections();
    drawParts();
    updateScale();
    render();
  }

  setup();
  // For scripts and benchmarks: the state, and the sampling arithmetic on the page's own data.
  window.dcnviz = { data: DATA, state, render, sample, pointAttributes, cellAt };
  document.body.dataset.ready = "1";
})();
