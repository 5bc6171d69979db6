// The coverage map page: reads /v1/symbols, /api/map and /v1/candles from the listener that
// served it, draws one lane per stream and a candle chart of the selected range.
//
// Every range is an element <div data-kind data-start data-end> (ISO 8601 UTC), placed by
// its times; once drawn, each lane records its box in data-box ("left,top,width,height" in
// CSS pixels) and <body data-state> turns "ready" (or "error"), so a test can find a time's
// x position in a screenshot.
'use strict';

// A lane draws either the kinds that tile its stream, or only one kind drawn over them.
const LANES = [
  { stream: 'trades', lane: 'trades', label: 'trades', only: null },
  { stream: 'trades', lane: 'trade-ids', label: 'trade ids', only: 'id-hole' },
  { stream: 'candles', lane: 'candles', label: 'candles', only: null },
  { stream: 'candles', lane: 'candle-mismatches', label: 'mismatches', only: 'mismatch' },
];
const OVER = new Set(LANES.map((spec) => spec.only).filter((kind) => kind));
// Candle intervals the chart picks from (minutes): the finest with at most MAX_CANDLES.
const INTERVALS = [1, 5, 15, 30, 60, 240, 720, 1440, 10080];
const MAX_CANDLES = 1500;
const MINUTE_MS = 60000;

const params = new URLSearchParams(location.search);
const view = { symbol: '', start: 0, end: 0 };
let chart = null;
let candleSeries = null;
let volumeSeries = null;

function iso(ms) {
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}

function show(text) {
  document.getElementById('message').textContent = text;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error || `${url}: HTTP ${response.status}`);
  }
  return body;
}

function parseTime(text) {
  const value = /^\d+(\.\d+)?$/.test(text) ? Number(text) * 1000 : Date.parse(text);
  if (Number.isNaN(value)) {
    throw new Error(`not a time: ${text}`);
  }
  return value;
}

function extentOf(entry) {
  const spans = [entry.trades, entry.candles].filter((span) => span);
  if (!spans.length) {
    return null;
  }
  const first = Math.min(...spans.map((span) => Date.parse(span.first)));
  const last = Math.max(...spans.map((span) => Date.parse(span.last)));
  return [Math.floor(first / MINUTE_MS) * MINUTE_MS, (Math.floor(last / MINUTE_MS) + 1) * MINUTE_MS];
}

function fraction(ms) {
  return (ms - view.start) / (view.end - view.start);
}

function timeAt(lane, clientX) {
  const box = lane.getBoundingClientRect();
  const f = Math.min(1, Math.max(0, (clientX - box.left) / box.width));
  return view.start + f * (view.end - view.start);
}

function rangeElement(range) {
  const element = document.createElement('div');
  const start = Date.parse(range.start);
  const end = Date.parse(range.end);
  element.className = `range kind-${range.kind}`;
  element.dataset.kind = range.kind;
  element.dataset.start = range.start;
  element.dataset.end = range.end;
  element.style.left = `${(fraction(start) * 100).toFixed(4)}%`;
  element.style.width = `${((fraction(end) - fraction(start)) * 100).toFixed(4)}%`;
  element.title = `${range.kind}: ${range.start} – ${range.end}${range.detail ? `\n${range.detail}` : ''}`;
  return element;
}

function drawMap(map) {
  const root = document.getElementById('map');
  root.replaceChildren();
  for (const spec of LANES) {
    const row = document.createElement('div');
    row.className = spec.only ? 'row thin' : 'row';
    const label = document.createElement('div');
    label.className = 'label';
    label.textContent = spec.label;
    const lane = document.createElement('div');
    lane.className = 'lane';
    lane.dataset.lane = spec.lane;
    lane.dataset.start = map.start;
    lane.dataset.end = map.end;
    for (const range of map.streams[spec.stream].ranges) {
      if (spec.only ? range.kind === spec.only : !OVER.has(range.kind)) {
        lane.append(rangeElement(range));
      }
    }
    row.append(label, lane);
    root.append(row);
    listen(lane);
  }
  const axis = document.getElementById('axis');
  axis.replaceChildren();
  for (let i = 0; i <= 4; i += 1) {
    const tick = document.createElement('span');
    tick.className = 'tick';
    tick.style.left = `${i * 25}%`;
    tick.textContent = iso(view.start + (i / 4) * (view.end - view.start)).replace('T', ' ').slice(0, 16);
    axis.append(tick);
  }
}

function recordBoxes() {
  for (const lane of document.querySelectorAll('.lane')) {
    const box = lane.getBoundingClientRect();
    lane.dataset.box = [box.left, box.top, box.width, box.height].map(Math.round).join(',');
  }
}

function markSelection(start, end) {
  for (const lane of document.querySelectorAll('.lane')) {
    let mark = lane.querySelector('.selection');
    if (start <= view.start && end >= view.end) {
      mark?.remove(); // the whole view is charted: nothing to set apart
      continue;
    }
    if (!mark) {
      mark = document.createElement('div');
      mark.className = 'selection';
      lane.append(mark);
    }
    mark.style.left = `${fraction(start) * 100}%`;
    mark.style.width = `${(fraction(end) - fraction(start)) * 100}%`;
  }
}

function listen(lane) {
  lane.addEventListener('mousedown', (down) => {
    const from = timeAt(lane, down.clientX);
    const up = (event) => {
      window.removeEventListener('mouseup', up);
      const to = timeAt(lane, event.clientX);
      if (Math.abs(event.clientX - down.clientX) >= 3) {
        select(Math.min(from, to), Math.max(from, to));
        return;
      }
      // A click: chart the range clicked with some context either side, else the 10% of
      // the view around the point.
      const target = down.target.closest('.range');
      const pad = (view.end - view.start) * 0.05;
      if (target) {
        const start = Date.parse(target.dataset.start);
        const end = Date.parse(target.dataset.end);
        const context = Math.max((end - start) * 0.25, MINUTE_MS * 30);
        select(Math.max(view.start, start - context), Math.min(view.end, end + context));
      } else {
        select(Math.max(view.start, from - pad), Math.min(view.end, from + pad));
      }
    };
    window.addEventListener('mouseup', up);
  });
}

async function select(start, end) {
  params.set('chart_start', iso(start));
  params.set('chart_end', iso(end));
  history.replaceState(null, '', `?${params}`);
  try {
    await drawChart(start, end);
  } catch (error) {
    show(`candles: ${error.message}`);
  }
}

function makeChart() {
  chart = LightweightCharts.createChart(document.getElementById('chart'), {
    autoSize: true,
    layout: { background: { color: '#ffffff' }, textColor: '#212121' },
    timeScale: { timeVisible: true, secondsVisible: false },
  });
  candleSeries = chart.addSeries(LightweightCharts.CandlestickSeries, {});
  candleSeries.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });
  volumeSeries = chart.addSeries(LightweightCharts.HistogramSeries, {
    priceFormat: { type: 'volume' },
    priceScaleId: 'volume',
    color: '#90a4ae',
  });
  volumeSeries.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
}

// The chart's time axis only has the times its data has; an empty point for every bucket
// without a candle keeps the axis linear, so a hole on the map is a gap in the chart too.
// The buckets keep the phase of the candles' own times (a week starts when the rollup says).
function withWhitespace(candles, from, to, stepMs) {
  const phase = candles.length ? (candles[0].time * 1000) % stepMs : 0;
  const have = new Set(candles.map((c) => c.time));
  const points = [...candles];
  for (let t = from - (((from - phase) % stepMs) + stepMs) % stepMs; t < to; t += stepMs) {
    if (t >= from - stepMs && !have.has(t / 1000)) {
      points.push({ time: t / 1000 });
    }
  }
  return points.sort((a, b) => a.time - b.time);
}

async function drawChart(start, end) {
  const from = Math.floor(start / MINUTE_MS) * MINUTE_MS;
  const to = Math.max(from + MINUTE_MS, Math.ceil(end / MINUTE_MS) * MINUTE_MS);
  const minutes = (to - from) / MINUTE_MS;
  const interval = INTERVALS.find((n) => minutes / n <= MAX_CANDLES) || INTERVALS[INTERVALS.length - 1];
  const query = new URLSearchParams({
    symbol: view.symbol, interval: `${interval}m`, start: iso(from), end: iso(to), format: 'json',
  });
  const body = await getJSON(`/v1/candles?${query}`);
  const candles = body.candles.map((c) => ({
    time: Date.parse(c.time) / 1000,
    open: Number(c.open),
    high: Number(c.high),
    low: Number(c.low),
    close: Number(c.close),
    volume: Number(c.volume),
  }));
  if (!chart) {
    makeChart();
  }
  candleSeries.setData(withWhitespace(candles, from, to, interval * MINUTE_MS));
  volumeSeries.setData(candles.map((c) => ({ time: c.time, value: c.volume })));
  chart.timeScale().fitContent();
  markSelection(from, to);
  const title = document.getElementById('chart-title');
  title.dataset.start = iso(from);
  title.dataset.end = iso(to);
  title.dataset.candles = String(candles.length);
  title.textContent = `${view.symbol} ${body.interval} candles, ${iso(from)} – ${iso(to)}: `
    + (candles.length ? `${candles.length} candles` : 'no candles in this range');
}

async function main() {
  const { symbols } = await getJSON('/v1/symbols');
  const select = document.getElementById('symbol');
  for (const entry of symbols) {
    select.append(new Option(entry.symbol, entry.symbol));
  }
  // A symbol with nothing stored can still be mapped over a given range (all hole), so a
  // wanted symbol that is not in the list is asked for as it is; /api/map says if unknown.
  const wanted = params.get('symbol');
  const entry = symbols.find((s) => [s.symbol, s.altname, s.rest_key, s.wsname].includes(wanted))
    || (wanted ? null : symbols[0]);
  view.symbol = entry ? entry.symbol : wanted;
  if (!view.symbol) {
    show('Nothing is stored yet.');
    document.body.dataset.state = 'ready';
    return;
  }
  if (!entry) {
    select.append(new Option(view.symbol, view.symbol));
  }
  select.value = view.symbol;
  const extent = entry && extentOf(entry);
  view.start = params.get('start') ? parseTime(params.get('start')) : extent && extent[0];
  view.end = params.get('end') ? parseTime(params.get('end')) : extent && extent[1];
  if (view.start == null || view.end == null) {
    show(`Nothing is stored for ${view.symbol}; give a range to see its holes.`);
    document.body.dataset.state = 'ready';
    return;
  }
  document.getElementById('start').value = iso(view.start);
  document.getElementById('end').value = iso(view.end);
  const query = new URLSearchParams({ symbol: view.symbol, start: iso(view.start), end: iso(view.end) });
  show(`Reading the coverage of ${view.symbol} (trade-id checks take about a second per million trades)…`);
  const map = await getJSON(`/api/map?${query}`);
  view.symbol = map.symbol;
  drawMap(map);
  show(`${map.symbol}, ${map.start} – ${map.end} (UTC); empty stretches shown at`
    + ` ${map.resolution_s / 60} min resolution.`);
  const chartStart = params.get('chart_start') ? parseTime(params.get('chart_start')) : view.start;
  const chartEnd = params.get('chart_end') ? parseTime(params.get('chart_end')) : view.end;
  await drawChart(chartStart, chartEnd);
  recordBoxes();
  window.addEventListener('resize', recordBoxes);
  document.body.dataset.state = 'ready';
}

document.getElementById('controls').addEventListener('submit', (event) => {
  event.preventDefault();
  const next = new URLSearchParams();
  for (const name of ['symbol', 'start', 'end']) {
    const value = document.getElementById(name).value.trim();
    if (value) {
      next.set(name, value);
    }
  }
  location.search = `?${next}`;
});

main().catch((error) => {
  show(error.message);
  document.body.dataset.state = 'error';
});
