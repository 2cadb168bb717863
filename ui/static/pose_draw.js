// Pose maps drawn in the browser with the server's own pixels: window.PoseDraw.
//
// The server draws OpenPose maps with OpenCV (annotators/pose_draw.py: cv2.ellipse2Poly and
// cv2.fillConvexPoly for limbs, cv2.circle for joints, cv2.line of thickness 2 for hand bones).
// Canvas 2D paths are antialiased and would not give the same map, so the integer rasterisers
// those calls run are ported here from OpenCV's modules/imgproc/src/drawing.cpp (Apache-2.0;
// originally Intel's BSD-licensed code): ellipse2Poly with its table of sines, FillConvexPoly,
// the 8-connected Line and its fixed-point variant Line2, ThickLine and the filled Circle, with
// OpenCV's clipping and its rounding (cvRound: to nearest, halves to even). The Python side's
// float steps (int() truncation, the mean of two numbers, the square root, atan2 in degrees) are
// the same IEEE-754 double operations here. tests/test_pose_draw_js.py compares both pixel for
// pixel.
//
//   PoseDraw.drawPoses(people, width, height, {hands, face, atOnce}) -> Uint8ClampedArray RGBA
//   PoseDraw.drawToCanvas(canvas, people, width, height, options)
//   PoseDraw.peopleFromJson(json) -> {people, width, height}
// A person is {body: 18 x ([x, y] | null), hands: [21 x ([x, y] | null) | null, ...],
// face: 70 or 68 x ([x, y] | null) | null}, in pixels of the canvas, as pose JSON holds them.
(function () {
  "use strict";

  const XY_SHIFT = 16;
  const XY_ONE = 1 << XY_SHIFT;
  const shr = (value, bits) => Math.floor(value / 2 ** bits); // int64 >> (arithmetic)
  const shl = (value, bits) => value * 2 ** bits;
  const idiv = (a, b) => Math.trunc(a / b); // C integer division (exact below 2**53)

  // cvRound: the nearest integer, halves to even (lrint in the default rounding mode).
  function cvRound(value) {
    const rounded = Math.round(value); // halves up
    return rounded - value === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
  }

  // OpenCV's float table of sin(i degrees), i = 0..450, written to 7 decimals.
  const SIN_TABLE = Float32Array.from({ length: 451 }, (_, i) =>
    Math.round(Math.sin((i * Math.PI) / 180) * 1e7) / 1e7);

  // ---- the image -------------------------------------------------------------------------
  class Image {
    constructor(width, height) {
      this.width = width;
      this.height = height;
      this.data = new Uint8ClampedArray(width * height * 4);
      for (let i = 3; i < this.data.length; i += 4) this.data[i] = 255;
    }

    put(x, y, colour) {
      const i = 4 * (y * this.width + x);
      this.data[i] = colour[0];
      this.data[i + 1] = colour[1];
      this.data[i + 2] = colour[2];
    }

    hline(y, left, right, colour) {
      for (let x = left; x <= right; x++) this.put(x, y, colour);
    }
  }

  // cv::Scalar to 8-bit channels (saturate_cast<uchar>).
  const channels = (colour) => colour.map((c) => Math.min(255, Math.max(0, cvRound(c))));

  // ---- lines -----------------------------------------------------------------------------
  // clipLine on (width, height): the segment cut to the image, or null if it misses it.
  // int64 arithmetic in BigInt (products of fixed-point coordinates pass 2**53).
  function clipLine(width, height, p1, p2) {
    if (width <= 0 || height <= 0) return null;
    const right = BigInt(width) - 1n, bottom = BigInt(height) - 1n;
    let [x1, y1] = p1.map(BigInt), [x2, y2] = p2.map(BigInt);
    const code = (x, y) => (x < 0n) + (x > right) * 2 + (y < 0n) * 4 + (y > bottom) * 8;
    let c1 = code(x1, y1), c2 = code(x2, y2);
    if ((c1 & c2) === 0 && (c1 | c2) !== 0) {
      if (c1 & 12) {
        const a = c1 < 8 ? 0n : bottom;
        x1 += ((a - y1) * (x2 - x1)) / (y2 - y1);
        y1 = a;
        c1 = (x1 < 0n) + (x1 > right) * 2;
      }
      if (c2 & 12) {
        const a = c2 < 8 ? 0n : bottom;
        x2 += ((a - y2) * (x2 - x1)) / (y2 - y1);
        y2 = a;
        c2 = (x2 < 0n) + (x2 > right) * 2;
      }
      if ((c1 & c2) === 0 && (c1 | c2) !== 0) {
        if (c1) {
          const a = c1 === 1 ? 0n : right;
          y1 += ((a - x1) * (y2 - y1)) / (x2 - x1);
          x1 = a;
          c1 = 0;
        }
        if (c2) {
          const a = c2 === 1 ? 0n : right;
          y2 += ((a - x2) * (y2 - y1)) / (x2 - x1);
          x2 = a;
          c2 = 0;
        }
      }
    }
    if ((c1 | c2) !== 0) return null;
    return [[Number(x1), Number(y1)], [Number(x2), Number(y2)]];
  }

  // Line: LineIterator's 8-connected walk, left to right, clipped to the image first.
  function line(image, p1, p2, colour) {
    const { width, height } = image;
    const outside = (p) => p[0] < 0 || p[0] >= width || p[1] < 0 || p[1] >= height;
    if (outside(p1) || outside(p2)) {
      const clipped = clipLine(width, height, p1, p2);
      if (!clipped) return;
      [p1, p2] = clipped;
    }
    let dx = p2[0] - p1[0], dy = p2[1] - p1[1];
    let [x, y] = p1;
    if (dx < 0) { // start from the left end
      dx = -dx;
      dy = -dy;
      [x, y] = p2;
    }
    const yStep = dy < 0 ? -1 : 1;
    dy = Math.abs(dy);
    const steep = dy > dx;
    if (steep) [dx, dy] = [dy, dx];
    // The major axis steps every pixel; the minor one when the error goes below zero.
    const major = steep ? [0, yStep] : [1, 0];
    const minor = steep ? [1, 0] : [0, yStep];
    let err = dx - (dy + dy);
    const plusDelta = dx + dx, minusDelta = -(dy + dy);
    for (let i = 0; i <= dx; i++) {
      image.put(x, y, colour);
      const below = err < 0;
      err += minusDelta + (below ? plusDelta : 0);
      x += major[0] + (below ? minor[0] : 0);
      y += major[1] + (below ? minor[1] : 0);
    }
  }

  // Line2: a line between fixed-point (XY_SHIFT) ends, pixel by pixel with a bounds check.
  function line2(image, p1, p2, colour) {
    const { width, height } = image;
    const clipped = clipLine(shl(width, XY_SHIFT), shl(height, XY_SHIFT), p1, p2);
    if (!clipped) return;
    let [[x1, y1], [x2, y2]] = clipped;
    let dx = x2 - x1, dy = y2 - y1;
    const ax = Math.abs(dx), ay = Math.abs(dy);
    let xStep, yStep, count;
    if (ax > ay) {
      if (dx < 0) {
        [x1, x2] = [x2, x1];
        [y1, y2] = [y2, y1];
        dy = -dy;
      }
      xStep = XY_ONE;
      yStep = idiv(shl(dy, XY_SHIFT), ax | 1);
      count = shr(x2 - x1, XY_SHIFT);
    } else {
      if (dy < 0) {
        [x1, x2] = [x2, x1];
        [y1, y2] = [y2, y1];
        dx = -dx;
      }
      xStep = idiv(shl(dx, XY_SHIFT), ay | 1);
      yStep = XY_ONE;
      count = shr(y2 - y1, XY_SHIFT);
    }
    x1 += XY_ONE >> 1;
    y1 += XY_ONE >> 1;
    const put = (x, y) => {
      if (x >= 0 && x < width && y >= 0 && y < height) image.put(x, y, colour);
    };
    put(shr(x2 + (XY_ONE >> 1), XY_SHIFT), shr(y2 + (XY_ONE >> 1), XY_SHIFT));
    if (ax > ay) {
      x1 = shr(x1, XY_SHIFT);
      for (; count >= 0; count--, x1++, y1 += yStep) put(x1, shr(y1, XY_SHIFT));
    } else {
      y1 = shr(y1, XY_SHIFT);
      for (; count >= 0; count--, x1 += xStep, y1++) put(shr(x1, XY_SHIFT), y1);
    }
  }

  // ---- polygons and circles --------------------------------------------------------------
  // FillConvexPoly (LINE_8): the outline, then the rows between its left and right edges.
  function fillConvexPoly(image, points, colour, shift) {
    const npts = points.length;
    const { width, height } = image;
    const delta = (1 << shift) >> 1;
    const half = XY_ONE >> 1;
    let imin = 0;
    let xmin = points[0][0], xmax = xmin, ymin = points[0][1], ymax = ymin;
    let p0 = [shl(points[npts - 1][0], XY_SHIFT - shift), shl(points[npts - 1][1], XY_SHIFT - shift)];
    for (let i = 0; i < npts; i++) {
      const [px, py] = points[i];
      if (py < ymin) {
        ymin = py;
        imin = i;
      }
      ymax = Math.max(ymax, py);
      xmax = Math.max(xmax, px);
      xmin = Math.min(xmin, px);
      const p = [shl(px, XY_SHIFT - shift), shl(py, XY_SHIFT - shift)];
      if (shift === 0) {
        line(image, [shr(p0[0], XY_SHIFT), shr(p0[1], XY_SHIFT)],
          [shr(p[0], XY_SHIFT), shr(p[1], XY_SHIFT)], colour);
      } else {
        line2(image, p0, p, colour);
      }
      p0 = p;
    }
    xmin = shr(xmin + delta, shift);
    xmax = shr(xmax + delta, shift);
    ymin = shr(ymin + delta, shift);
    ymax = shr(ymax + delta, shift);
    if (npts < 3 || xmax < 0 || ymax < 0 || xmin >= width || ymin >= height) return;
    ymax = Math.min(ymax, height - 1);
    const edge = [0, 1].map((i) => ({
      idx: imin, di: i === 0 ? 1 : npts - 1, x: -XY_ONE, dx: 0, ye: ymin,
    }));
    let edges = npts;
    let y = ymin;
    do {
      for (let i = 0; i < 2; i++) {
        if (y < edge[i].ye) continue;
        let idx0 = edge[i].idx;
        const di = edge[i].di;
        let idx = idx0 + di;
        if (idx >= npts) idx -= npts;
        for (; edges-- > 0;) {
          const ty = shr(points[idx][1] + delta, shift);
          if (ty > y) {
            const xs = shl(points[idx0][0], XY_SHIFT - shift);
            const xe = shl(points[idx][0], XY_SHIFT - shift);
            edge[i].ye = ty;
            edge[i].dx = idiv((xe - xs) * 2 + (ty - y), 2 * (ty - y));
            edge[i].x = xs;
            edge[i].idx = idx;
            break;
          }
          idx0 = idx;
          idx += di;
          if (idx >= npts) idx -= npts;
        }
      }
      if (edges < 0) break;
      if (y >= 0) {
        const [left, right] = edge[0].x > edge[1].x ? [1, 0] : [0, 1];
        let x1 = shr(edge[left].x + half, XY_SHIFT);
        let x2 = shr(edge[right].x + half, XY_SHIFT);
        if (x2 >= 0 && x1 < width) {
          x1 = Math.max(x1, 0);
          x2 = Math.min(x2, width - 1);
          image.hline(y, x1, x2, colour);
        }
      }
      edge[0].x += edge[0].dx;
      edge[1].x += edge[1].dx;
    } while (++y <= ymax);
  }

  // Circle (LINE_8, filled): the midpoint circle, its rows filled, clipped where needed.
  function fillCircle(image, cx, cy, radius, colour) {
    const { width, height } = image;
    let err = 0, dx = radius, dy = 0, plus = 1, minus = (radius << 1) - 1;
    const inside = cx >= radius && cx < width - radius && cy >= radius && cy < height - radius;
    while (dx >= dy) {
      const y11 = cy - dy, y12 = cy + dy, y21 = cy - dx, y22 = cy + dx;
      let x11 = cx - dx, x12 = cx + dx, x21 = cx - dy, x22 = cx + dy;
      if (inside) {
        image.hline(y11, x11, x12, colour);
        image.hline(y12, x11, x12, colour);
        image.hline(y21, x21, x22, colour);
        image.hline(y22, x21, x22, colour);
      } else if (x11 < width && x12 >= 0 && y21 < height && y22 >= 0) {
        x11 = Math.max(x11, 0);
        x12 = Math.min(x12, width - 1);
        if (y11 >= 0 && y11 < height) image.hline(y11, x11, x12, colour);
        if (y12 >= 0 && y12 < height) image.hline(y12, x11, x12, colour);
        if (x21 < width && x22 >= 0) {
          x21 = Math.max(x21, 0);
          x22 = Math.min(x22, width - 1);
          if (y21 >= 0 && y21 < height) image.hline(y21, x21, x22, colour);
          if (y22 >= 0 && y22 < height) image.hline(y22, x21, x22, colour);
        }
      }
      dy++;
      err += plus;
      plus += 2;
      const mask = err <= 0 ? 0 : -1;
      err -= minus & mask;
      dx += mask;
      minus -= mask & 2;
    }
  }

  // cv2.line(thickness > 1, LINE_8, shift 0): a filled quadrilateral and round caps.
  function thickLine(image, start, end, colour, thickness) {
    const p0 = [shl(start[0], XY_SHIFT), shl(start[1], XY_SHIFT)];
    const p1 = [shl(end[0], XY_SHIFT), shl(end[1], XY_SHIFT)];
    const dx = (p0[0] - p1[0]) / XY_ONE, dy = (p1[1] - p0[1]) / XY_ONE;
    let r = dx * dx + dy * dy;
    const odd = thickness & 1;
    const fixed = thickness * (XY_ONE >> 1);
    if (Math.abs(r) > Number.EPSILON) {
      r = (fixed + odd * XY_ONE * 0.5) / Math.sqrt(r);
      const dpx = cvRound(dy * r), dpy = cvRound(dx * r);
      fillConvexPoly(image, [
        [p0[0] + dpx, p0[1] + dpy], [p0[0] - dpx, p0[1] - dpy],
        [p1[0] - dpx, p1[1] - dpy], [p1[0] + dpx, p1[1] + dpy],
      ], colour, XY_SHIFT);
    }
    const capRadius = shr(fixed + (XY_ONE >> 1), XY_SHIFT);
    for (const p of [p0, p1]) {
      fillCircle(image, shr(p[0] + (XY_ONE >> 1), XY_SHIFT), shr(p[1] + (XY_ONE >> 1), XY_SHIFT),
        capRadius, colour);
    }
  }

  // cv2.ellipse2Poly(center, axes, angle, 0, 360, delta) with whole-number arguments.
  function ellipse2Poly(center, axes, angle, delta) {
    while (angle < 0) angle += 360;
    while (angle > 360) angle -= 360;
    const alpha = SIN_TABLE[450 - angle], beta = SIN_TABLE[angle];
    const points = [];
    let previous = null;
    for (let i = 0; i < 360 + delta; i += delta) {
      const t = Math.min(i, 360);
      const x = axes[0] * SIN_TABLE[450 - t];
      const y = axes[1] * SIN_TABLE[t];
      const px = cvRound(center[0] + x * alpha - y * beta);
      const py = cvRound(center[1] + x * beta + y * alpha);
      if (!previous || previous[0] !== px || previous[1] !== py) {
        previous = [px, py];
        points.push(previous);
      }
    }
    return points.length === 1 ? [center, center] : points;
  }

  // ---- OpenPose's drawing (annotators/pose_draw.py) -----------------------------------------
  const LIMBS = [
    [1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10],
    [1, 11], [11, 12], [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17],
  ];
  const BODY_COLOURS = [
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
    [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
    [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85],
  ];
  const LIMB_COLOURS = BODY_COLOURS.slice(0, LIMBS.length).map((c) => c.map((v) => Math.trunc(v * 0.6)));
  const STICK_WIDTH = 4;
  const JOINT_RADIUS = 4;
  const HAND_EDGES = [
    [0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11],
    [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20],
  ];
  // Python's colorsys.hsv_to_rgb(h, 1, 1) times 255, then rounded as cv2 rounds a Scalar.
  function hsvToRgb(h) {
    const i = Math.trunc(h * 6.0), f = h * 6.0 - i;
    const p = 0.0, q = 1.0 * (1.0 - f), t = 1.0 * (1.0 - (1.0 - f));
    return [[1, t, p], [q, 1, p], [p, 1, t], [p, q, 1], [t, p, 1], [1, p, q]][i % 6];
  }
  const HAND_COLOURS = HAND_EDGES.map((_, i) =>
    channels(hsvToRgb(i / HAND_EDGES.length).map((c) => 255.0 * c)));
  const HAND_JOINT = [0, 0, 255];
  const FACE_COLOUR = [255, 255, 255];
  const EPS = 0.01;

  function drawLimb(image, start, end, colour) {
    const meanX = (start[0] + end[0]) / 2, meanY = (start[1] + end[1]) / 2;
    const dy = start[1] - end[1], dx = start[0] - end[0];
    const length = Math.sqrt(dy * dy + dx * dx);
    const angle = Math.atan2(dy, dx) * (180.0 / Math.PI);
    const polygon = ellipse2Poly([Math.trunc(meanX), Math.trunc(meanY)],
      [Math.trunc(length / 2), STICK_WIDTH], Math.trunc(angle), 1);
    fillConvexPoly(image, polygon, colour, 0);
  }

  function drawBodies(image, bodies) {
    LIMBS.forEach(([first, second], i) => {
      for (const body of bodies) {
        if (body[first] && body[second]) drawLimb(image, body[first], body[second], LIMB_COLOURS[i]);
      }
    });
    BODY_COLOURS.forEach((colour, index) => {
      for (const body of bodies) {
        const point = body[index];
        if (point) fillCircle(image, Math.trunc(point[0]), Math.trunc(point[1]), JOINT_RADIUS, colour);
      }
    });
  }

  const pixel = (point) => {
    if (!point) return null;
    const x = Math.trunc(point[0]), y = Math.trunc(point[1]);
    return x > EPS && y > EPS ? [x, y] : null;
  };

  function drawHand(image, hand) {
    const pixels = hand.map(pixel);
    HAND_EDGES.forEach(([first, second], i) => {
      if (pixels[first] && pixels[second]) {
        thickLine(image, pixels[first], pixels[second], HAND_COLOURS[i], 2);
      }
    });
    for (const p of pixels) if (p) fillCircle(image, p[0], p[1], JOINT_RADIUS, HAND_JOINT);
  }

  function drawFace(image, face) {
    for (const point of face) {
      const p = pixel(point);
      if (p) fillCircle(image, p[0], p[1], 3, FACE_COLOUR);
    }
  }

  function drawPoses(people, width, height, options = {}) {
    const { hands = true, face = true, atOnce = false } = options;
    const image = new Image(width, height);
    const handsOf = (person) => (person.hands || []).slice(0, 2);
    if (atOnce) { // DWPose's order: every body, every left hand, every right hand, the faces
      drawBodies(image, people.map((person) => person.body));
      if (hands) {
        for (const side of [0, 1]) {
          for (const person of people) if (handsOf(person)[side]) drawHand(image, handsOf(person)[side]);
        }
      }
      if (face) for (const person of people) if (person.face) drawFace(image, person.face);
    } else { // person by person
      for (const person of people) {
        drawBodies(image, [person.body]);
        if (hands) for (const hand of handsOf(person)) if (hand) drawHand(image, hand);
        if (face && person.face) drawFace(image, person.face);
      }
    }
    return image.data;
  }

  function drawToCanvas(canvas, people, width, height, options) {
    canvas.width = width;
    canvas.height = height;
    const pixels = drawPoses(people, width, height, options);
    canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
  }

  // ---- reading pose JSON (annotators/pose_json.py's rules) ------------------------------------
  const PART_KEYS = ["pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d",
    "face_keypoints_2d"];

  function peopleFromJson(document) {
    const width = document.canvas_width, height = document.canvas_height;
    const raw = (document.people || []).map((person) => PART_KEYS.map((key) => {
      const values = person[key];
      if (!values || !values.length) return null;
      const points = [];
      for (let i = 0; i < values.length; i += 3) {
        points.push(values[i + 2] > 0 ? [values[i], values[i + 1]] : null);
      }
      return points;
    }));
    // Every counted value within 0..1: normalised coordinates.
    const normalised = raw.every((parts) => parts.every((part) => !part
      || part.every((p) => !p || (p[0] >= 0 && p[0] <= 1 && p[1] >= 0 && p[1] <= 1))));
    const scale = normalised ? [width, height] : [1, 1];
    const inside = (part) => part && part.map((p) => {
      if (!p) return null;
      const x = p[0] * scale[0], y = p[1] * scale[1];
      return x >= 0 && x <= width && y >= 0 && y <= height ? [x, y] : null;
    });
    const people = raw.map(([body, left, right, face]) => ({
      body: inside(body) || new Array(18).fill(null),
      hands: [inside(left), inside(right)],
      face: inside(face),
    }));
    return { people, width, height };
  }

  window.PoseDraw = { drawPoses, drawToCanvas, peopleFromJson };
})();
