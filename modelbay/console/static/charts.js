/* The live charts of a version's page: polls the version's activity (JSON columns, one sample every
   few seconds) and draws them with uPlot (vendored beside this file). */
(function () {
  "use strict";

  const POLL_MS = 5000;
  const HEIGHT = 170;
  const SHORTEST_SPAN_S = 300; // a version's first samples are not stretched over the whole width
  const COUNTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]; // ticks of whole numbers
  const BLUE = "#1f5fbf", RED = "#b3261e", AMBER = "#8a5a00", GREEN = "#1e7a3c", GREY = "#7a8494";

  // Each chart: its lines, each read from a column of the answer (scaled: latencies in ms), and
  // whether it counts whole things.
  const CHARTS = {
    requests: { lines: [{ label: "requests/s", column: "requests_per_s", stroke: BLUE }] },
    latency: {
      lines: [
        { label: "p50", column: "latency_p50_s", stroke: GREEN, scale: 1000 },
        { label: "p95", column: "latency_p95_s", stroke: AMBER, scale: 1000 },
        { label: "p99", column: "latency_p99_s", stroke: RED, scale: 1000 },
      ],
    },
    failures: { lines: [{ label: "failures/s", column: "failures_per_s", stroke: RED }] },
    queue: { lines: [{ label: "waiting", column: "queue_depth", stroke: AMBER }], whole: true },
    instances: {
      lines: [
        { label: "starting", column: "instances_starting", stroke: GREY },
        { label: "idle", column: "instances_idle", stroke: GREEN },
        { label: "busy", column: "instances_busy", stroke: BLUE },
      ],
      whole: true,
    },
  };

  function widthOf(figure) {
    return Math.max(figure.clientWidth, 200);
  }

  // From zero up, so a flat line of small values does not fill the chart.
  function fromZero(u, min, max) {
    return [0, max === null || max <= 0 ? 1 : max * 1.1];
  }

  // From the first sample to the last, over at least a few minutes (read from the data: uPlot widens
  // a single point's range to a day's worth of milliseconds, taken as seconds).
  function recentPast(u) {
    const times = u.data[0];
    const end = times.length ? times[times.length - 1] : Date.now() / 1000;
    return [Math.min(times.length ? times[0] : end, end - SHORTEST_SPAN_S), end];
  }

  function columns(series, lines) {
    return [series.time, ...lines.map((line) => series[line.column].map(
      (value) => (value === null || line.scale === undefined ? value : value * line.scale)))];
  }

  function setUp(root) {
    const charts = [];
    for (const figure of root.querySelectorAll("figure[data-chart]")) {
      const chart = CHARTS[figure.dataset.chart];
      const lines = chart.lines;
      const options = {
        width: widthOf(figure),
        height: HEIGHT,
        scales: { x: { time: true, range: recentPast }, y: { range: fromZero } },
        axes: [{}, chart.whole ? { incrs: COUNTS } : {}],
        series: [{}, ...lines.map((line) => ({ label: line.label, stroke: line.stroke, width: 1.5 }))],
      };
      const plot = new uPlot(options, [[], ...lines.map(() => [])], figure);
      charts.push({ figure, lines, plot });
    }
    window.addEventListener("resize", () => {
      for (const chart of charts) chart.plot.setSize({ width: widthOf(chart.figure), height: HEIGHT });
    });
    return charts;
  }

  function draw(root, note, charts, answer) {
    const series = answer.series;
    for (const chart of charts) chart.plot.setData(columns(series, chart.lines));
    const samples = series.time.length;
    root.dataset.samples = String(samples);
    note.textContent = samples
      ? `One sample every ${answer.period_s} s; the last at ${new Date(series.time[samples - 1] * 1000).toLocaleTimeString()}.`
      : "Nothing happened to this version on this server in the last hour.";
  }

  async function poll(root, note, charts) {
    try {
      if (!document.hidden) {
        const response = await fetch(root.dataset.source, { headers: { Accept: "application/json" } });
        if (response.redirected) { // the sign-in ended: to the sign-in page, as htmx does
          window.location.assign(response.url);
          return;
        }
        if (response.ok) {
          draw(root, note, charts, await response.json());
        } else {
          note.textContent = `The activity could not be read (${response.status}).`;
        }
      }
    } catch (error) {
      note.textContent = "The server cannot be reached; trying again.";
    }
    window.setTimeout(() => poll(root, note, charts), POLL_MS);
  }

  function start() {
    const root = document.getElementById("activity");
    if (root === null) return;
    const note = document.getElementById("activity-note");
    poll(root, note, setUp(root));
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
