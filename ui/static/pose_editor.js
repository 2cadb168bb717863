// The pose editor: OpenPose skeletons over the photo, edited in the browser.
//
// Mounted by ui/pose_editor.py inside a gr.HTML component (`PoseEditor.mount(element, props,
// trigger, watch)`). Its value is {source, pose}: `pose` is OpenPose JSON in pixels of its canvas
// (annotators/pose_json.py writes and reads the same format), `source` says where it came from:
// "detect" (an annotator found it), "json" (uploaded or pasted), "edit" (changed here). Only an
// edit becomes the tab's `pose_json` (what Run uses); a detected pose stays the annotator's.
//
// The control map is redrawn here at every move with PoseDraw (ui/static/pose_draw.js), the
// server's own integer rasterisation, so the map on screen is the map Run draws. Joints are
// dragged with a mouse, a pen or a finger (pointer events); the keyboard selects and moves them.
(function () {
  "use strict";

  const BODY_NAMES = [
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder",
    "left elbow", "left wrist", "right hip", "right knee", "right ankle", "left hip",
    "left knee", "left ankle", "right eye", "left eye", "right ear", "left ear",
  ];
  const NOSE = 0;
  const WRISTS = [7, 4]; // hand_left follows the left wrist, hand_right the right one
  const HAND_POINTS = 21;
  // A person standing, facing the viewer ("right" is the person's right, on the image's left):
  // (x from the body's middle, y from the top of the head), in body heights.
  const STANDING = [
    [0, 0.06], [0, 0.16], [-0.1, 0.16], [-0.13, 0.33], [-0.14, 0.48], [0.1, 0.16],
    [0.13, 0.33], [0.14, 0.48], [-0.06, 0.5], [-0.065, 0.74], [-0.07, 0.97], [0.06, 0.5],
    [0.065, 0.74], [0.07, 0.97], [-0.02, 0.04], [0.02, 0.04], [-0.045, 0.05], [0.045, 0.05],
  ];
  const BLANK_SIDE = 512; // a blank canvas: 512 on its long side, the photo's aspect if any
  const HANDLE_PX = 9; // a joint's handle radius on screen, CSS pixels (touch: larger)
  const TOUCH_HANDLE_PX = 16;
  const SCALE_STEP = 1.1;
  const UNDO_DEPTH = 50;

  const clamp = (value, low, high) => Math.min(Math.max(value, low), high);
  const copyPoints = (points) => (points ? points.map((p) => (p ? [p[0], p[1]] : null)) : null);

  function standingPerson(width, height, offset) {
    const tall = Math.min(0.8 * height, 1.6 * width);
    const middle = width * (0.5 + offset);
    const top = (height - tall) / 2;
    const body = STANDING.map(([dx, dy]) => [
      Math.round(clamp(middle + dx * tall, 0, width - 1)),
      Math.round(clamp(top + dy * tall, 0, height - 1)),
    ]);
    return { body, hidden: body.map(() => false), hands: [null, null], face: null };
  }

  function flat(points) {
    if (!points || points.every((p) => !p)) return null;
    const values = [];
    for (const p of points) values.push(...(p ? [p[0], p[1], 1] : [0, 0, 0]));
    return values;
  }

  class Editor {
    constructor(root, props, trigger, watch) {
      this.root = root;
      this.props = props;
      this.trigger = trigger;
      this.view = root.querySelector(".pose-editor-view");
      this.map = root.querySelector(".pose-editor-map");
      this.status = root.querySelector(".pose-editor-status");
      this.overlay = document.createElement("canvas");
      this.width = BLANK_SIDE;
      this.height = BLANK_SIDE;
      this.people = [];
      this.selected = null; // {person, part: "body" | "hand0" | "hand1" | "face", index}
      this.details = false; // hands' and face's own points can be dragged
      this.atOnce = false; // DWPose's drawing order (every body first)
      this.photo = null;
      this.undo = [];
      this.drag = null;
      this.bind();
      watch("value", () => this.fromValue(this.props.value));
      this.fromValue(this.props.value);
    }

    // ---- state in and out ----------------------------------------------------------------
    fromValue(value) {
      if (value && value.source === "edit") return; // our own edit coming back
      this.source = value && value.pose ? value.source : null;
      if (!value || !value.pose) {
        this.people = [];
        this.selected = null;
        this.redraw();
        this.say("No pose yet: preview the map to find one in the photo, or add a person.");
        return;
      }
      this.load(value.pose);
      this.say(value.source === "detect" ? "The pose found in the photo: drag a joint to edit it."
        : "The pose from the JSON: drag a joint to edit it.");
    }

    load(pose) {
      const read = window.PoseDraw.peopleFromJson(pose);
      this.width = read.width;
      this.height = read.height;
      this.people = read.people.map((person) => ({
        body: copyPoints(person.body),
        hidden: person.body.map((p) => !p),
        hands: [copyPoints((person.hands || [])[0]), copyPoints((person.hands || [])[1])],
        face: copyPoints(person.face),
      }));
      this.selected = null;
      this.undo = [];
      this.redraw();
    }

    toJson() {
      return {
        people: this.people.map((person) => ({
          pose_keypoints_2d:
            flat(this.visibleBody(person)) || new Array(3 * BODY_NAMES.length).fill(0),
          face_keypoints_2d: flat(person.face),
          hand_left_keypoints_2d: flat(person.hands[0]),
          hand_right_keypoints_2d: flat(person.hands[1]),
        })),
        canvas_height: this.height,
        canvas_width: this.width,
      };
    }

    visibleBody(person) {
      return person.body.map((p, index) => (person.hidden[index] ? null : p));
    }

    drawn() {
      return this.people.map((person) => ({
        body: this.visibleBody(person),
        hands: person.hands,
        face: person.face,
      }));
    }

    commit() {
      this.source = "edit";
      this.props.value = { source: "edit", pose: this.toJson() };
      this.trigger("change");
    }

    remember() {
      this.undo.push(JSON.stringify([this.people, this.width, this.height]));
      if (this.undo.length > UNDO_DEPTH) this.undo.shift();
    }

    // ---- actions ---------------------------------------------------------------------------
    setPhoto(url) {
      if (!url) {
        this.photo = null;
        this.redraw();
        return;
      }
      const image = new Image();
      image.onload = () => {
        this.photo = image;
        if (!this.people.length) this.fitBlank();
        this.redraw();
      };
      image.src = url;
    }

    // A new photo: a pose found in the old one goes (Run finds this one's); an edited or
    // imported pose stays, drawn over the new photo.
    photoChanged(url) {
      if (this.source === "detect") this.act("clear");
      this.setPhoto(url);
    }

    setOrder(atOnce) {
      this.atOnce = Boolean(atOnce);
      this.redraw();
    }

    fitBlank() {
      const image = this.photo;
      if (!image || !image.naturalWidth) {
        this.width = this.height = BLANK_SIDE;
        return;
      }
      const scale = BLANK_SIDE / Math.max(image.naturalWidth, image.naturalHeight);
      this.width = Math.max(8, Math.round(image.naturalWidth * scale));
      this.height = Math.max(8, Math.round(image.naturalHeight * scale));
    }

    addPerson() {
      this.remember();
      if (!this.people.length) this.fitBlank();
      const offsets = [0, -0.25, 0.25, -0.125, 0.125];
      const offset = offsets[this.people.length % offsets.length];
      this.people.push(standingPerson(this.width, this.height, offset));
      this.selected = { person: this.people.length - 1, part: "body", index: 1 };
      this.changed("Added a person.");
    }

    removePerson() {
      if (!this.selected) return this.say("Select a person first (click one of its joints).");
      this.remember();
      this.people.splice(this.selected.person, 1);
      this.selected = null;
      this.changed("Removed the person.");
    }

    toggleJoint() {
      const s = this.selected;
      if (!s || s.part !== "body") return this.say("Select a body joint first.");
      this.remember();
      const person = this.people[s.person];
      person.hidden[s.index] = !person.hidden[s.index];
      if (!person.hidden[s.index] && !person.body[s.index]) {
        person.body[s.index] = this.guessJoint(person, s.index);
      }
      this.changed(`${person.hidden[s.index] ? "Hid" : "Showed"} the ${BODY_NAMES[s.index]}.`);
    }

    // Where a joint the person never had goes: the standing pose fitted to the person's box.
    guessJoint(person, index) {
      const box = this.box(person);
      const tall = Math.max(box ? box.bottom - box.top : this.height * 0.8, 16);
      const middle = box ? (box.left + box.right) / 2 : this.width / 2;
      const top = box ? box.top : this.height * 0.1;
      const [dx, dy] = STANDING[index];
      return [
        Math.round(clamp(middle + dx * tall, 0, this.width - 1)),
        Math.round(clamp(top + dy * tall, 0, this.height - 1)),
      ];
    }

    scalePerson(factor) {
      if (!this.selected) return this.say("Select a person first (click one of its joints).");
      this.remember();
      const person = this.people[this.selected.person];
      const box = this.box(person);
      this.transform(person, (x, y) => [
        box.middleX + (x - box.middleX) * factor,
        box.middleY + (y - box.middleY) * factor,
      ]);
      this.changed(factor > 1 ? "Made the person bigger." : "Made the person smaller.");
    }

    undoLast() {
      const last = this.undo.pop();
      if (!last) return this.say("Nothing to undo.");
      [this.people, this.width, this.height] = JSON.parse(last);
      this.selected = null;
      this.changed("Undone.");
    }

    download() {
      const blob = new Blob([JSON.stringify(this.toJson(), null, 2)], { type: "application/json" });
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "pose.json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    }

    changed(message) {
      this.redraw();
      this.commit();
      if (message) this.say(message);
    }

    say(text) {
      this.status.textContent = text;
    }

    // ---- geometry ----------------------------------------------------------------------------
    *points(person) {
      // Every point a person has (hidden joints too: they keep their place), as [array, index].
      for (let i = 0; i < person.body.length; i++) if (person.body[i]) yield [person.body, i];
      for (const part of [...person.hands, person.face]) {
        if (part) for (let i = 0; i < part.length; i++) if (part[i]) yield [part, i];
      }
    }

    box(person) {
      let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
      for (const [points, i] of this.points(person)) {
        const [x, y] = points[i];
        left = Math.min(left, x); right = Math.max(right, x);
        top = Math.min(top, y); bottom = Math.max(bottom, y);
      }
      if (left === Infinity) return null;
      return { left, top, right, bottom, middleX: (left + right) / 2, middleY: (top + bottom) / 2 };
    }

    // Moves every point of `person` by `change(x, y)`, kept inside the canvas as a whole: a
    // change that would push the person out is cut back to the border.
    transform(person, change) {
      const moved = [];
      for (const [points, i] of this.points(person)) moved.push([points, i, change(...points[i])]);
      // The shift that brings the moved person back inside: right/down by the most any point
      // is out on the left/top, else left/up by the most any point is out on the right/bottom.
      const back = (values, side) => {
        const under = Math.max(0, ...values.map((v) => -v));
        const over = Math.min(0, ...values.map((v) => side - 1 - v));
        return under > 0 ? under : over;
      };
      const dx = back(moved.map(([, , p]) => p[0]), this.width);
      const dy = back(moved.map(([, , p]) => p[1]), this.height);
      for (const [points, i, [x, y]] of moved) {
        points[i] = [
          Math.round(clamp(x + dx, 0, this.width - 1)),
          Math.round(clamp(y + dy, 0, this.height - 1)),
        ];
      }
    }

    moveJoint(target, x, y) {
      const person = this.people[target.person];
      const points = this.partOf(person, target.part);
      const old = points[target.index];
      const next = [Math.round(clamp(x, 0, this.width - 1)), Math.round(clamp(y, 0, this.height - 1))];
      points[target.index] = next;
      if (target.part !== "body" || !old) return;
      // A hand follows its wrist, the face its nose.
      const dx = next[0] - old[0], dy = next[1] - old[1];
      const followers = [];
      WRISTS.forEach((wrist, side) => {
        if (target.index === wrist && person.hands[side]) followers.push(person.hands[side]);
      });
      if (target.index === NOSE && person.face) followers.push(person.face);
      for (const part of followers) {
        for (let i = 0; i < part.length; i++) {
          if (part[i]) {
            part[i] = [
              Math.round(clamp(part[i][0] + dx, 0, this.width - 1)),
              Math.round(clamp(part[i][1] + dy, 0, this.height - 1)),
            ];
          }
        }
      }
    }

    partOf(person, part) {
      if (part === "body") return person.body;
      if (part === "face") return person.face;
      return person.hands[part === "hand0" ? 0 : 1];
    }

    // Every handle that can be picked, in the order the keyboard visits them.
    handles() {
      const list = [];
      this.people.forEach((person, p) => {
        person.body.forEach((point, index) => {
          if (point) list.push({ person: p, part: "body", index });
        });
        if (!this.details) return;
        const parts = [["hand0", person.hands[0]], ["hand1", person.hands[1]], ["face", person.face]];
        for (const [part, points] of parts) {
          (points || []).forEach((point, index) => {
            if (point) list.push({ person: p, part, index });
          });
        }
      });
      return list;
    }

    pointAt(target) {
      return this.partOf(this.people[target.person], target.part)[target.index];
    }

    // ---- drawing -----------------------------------------------------------------------------
    redraw() {
      const { width, height } = this;
      const people = this.drawn();
      const options = { hands: true, face: true, atOnce: this.atOnce };
      // Drawn once per move: the map as it is, then a copy over the photo with the map's black
      // left out so the photo shows through.
      const pixels = window.PoseDraw.drawPoses(people, width, height, options);
      this.map.width = width;
      this.map.height = height;
      this.map.getContext("2d").putImageData(new ImageData(pixels.slice(), width, height), 0, 0);
      for (let i = 0; i < pixels.length; i += 4) {
        if (!pixels[i] && !pixels[i + 1] && !pixels[i + 2]) pixels[i + 3] = 0;
      }
      this.overlay.width = width;
      this.overlay.height = height;
      this.overlay.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
      this.view.width = width;
      this.view.height = height;
      const context = this.view.getContext("2d");
      context.fillStyle = "#000";
      context.fillRect(0, 0, width, height);
      if (this.photo) {
        context.globalAlpha = 0.55;
        context.drawImage(this.photo, 0, 0, width, height);
        context.globalAlpha = 1;
      }
      context.drawImage(this.overlay, 0, 0);
      this.drawHandles(context);
      this.root.dataset.people = String(this.people.length);
    }

    drawHandles(context) {
      const unit = this.canvasPerCssPixel();
      const radius = HANDLE_PX * 0.6 * unit;
      context.lineWidth = 1.5 * unit;
      for (const handle of this.handles()) {
        const [x, y] = this.pointAt(handle);
        const hidden = handle.part === "body" && this.people[handle.person].hidden[handle.index];
        const small = handle.part !== "body";
        context.beginPath();
        context.setLineDash(hidden ? [3 * unit, 3 * unit] : []);
        context.strokeStyle = hidden ? "#999" : "#fff";
        context.arc(x, y, small ? radius * 0.6 : radius, 0, 2 * Math.PI);
        context.stroke();
      }
      context.setLineDash([]);
      const s = this.selected;
      if (!s || !this.people[s.person]) return;
      const box = this.box(this.people[s.person]);
      if (box) {
        const pad = 6 * unit;
        context.strokeStyle = "#ffd400";
        context.setLineDash([5 * unit, 4 * unit]);
        context.strokeRect(box.left - pad, box.top - pad, box.right - box.left + 2 * pad,
          box.bottom - box.top + 2 * pad);
        context.setLineDash([]);
        const corner = this.scaleHandle(box);
        context.fillStyle = "#ffd400";
        context.fillRect(corner.x - radius, corner.y - radius, 2 * radius, 2 * radius);
      }
      const point = this.partOf(this.people[s.person], s.part)?.[s.index];
      if (point) {
        context.beginPath();
        context.strokeStyle = "#ffd400";
        context.lineWidth = 3 * unit;
        context.arc(point[0], point[1], radius * 1.4, 0, 2 * Math.PI);
        context.stroke();
      }
    }

    scaleHandle(box) {
      const pad = 6 * this.canvasPerCssPixel();
      return { x: box.right + pad, y: box.bottom + pad };
    }

    canvasPerCssPixel() {
      const shown = this.view.getBoundingClientRect().width;
      return shown > 0 ? this.width / shown : 1;
    }

    // ---- input -------------------------------------------------------------------------------
    canvasPoint(event) {
      const rect = this.view.getBoundingClientRect();
      return [
        ((event.clientX - rect.left) * this.width) / rect.width,
        ((event.clientY - rect.top) * this.height) / rect.height,
      ];
    }

    hit(x, y, touch) {
      const reach = (touch ? TOUCH_HANDLE_PX : HANDLE_PX) * this.canvasPerCssPixel();
      const s = this.selected;
      if (s && this.people[s.person]) {
        const box = this.box(this.people[s.person]);
        const corner = box && this.scaleHandle(box);
        if (corner && Math.hypot(x - corner.x, y - corner.y) <= reach) {
          return { kind: "scale", person: s.person };
        }
      }
      let best = null, bestDistance = reach;
      for (const handle of this.handles()) {
        const [hx, hy] = this.pointAt(handle);
        const distance = Math.hypot(x - hx, y - hy);
        // Body joints win over the hands' and face's small points at the same spot.
        const score = handle.part === "body" ? distance * 0.8 : distance;
        if (score <= bestDistance) {
          best = handle;
          bestDistance = score;
        }
      }
      if (best) return { kind: "joint", target: best };
      for (let p = this.people.length - 1; p >= 0; p--) {
        const box = this.box(this.people[p]);
        if (box && x >= box.left - reach && x <= box.right + reach && y >= box.top - reach
          && y <= box.bottom + reach) return { kind: "move", person: p };
      }
      return null;
    }

    bind() {
      const view = this.view;
      view.addEventListener("pointerdown", (event) => {
        const [x, y] = this.canvasPoint(event);
        const found = this.hit(x, y, event.pointerType === "touch");
        view.focus({ preventScroll: true });
        if (!found) {
          this.selected = null;
          this.redraw();
          return;
        }
        event.preventDefault();
        view.setPointerCapture(event.pointerId);
        this.remember();
        if (found.kind === "joint") {
          this.selected = found.target;
        } else if (!this.selected || this.selected.person !== found.person) {
          this.selected = { person: found.person, part: "body", index: 1 };
        }
        const person = this.people[this.selected.person];
        this.drag = {
          kind: found.kind, start: [x, y], pointer: event.pointerId, moved: false,
          before: JSON.stringify(person), box: this.box(person),
        };
        this.redraw();
        this.describe();
      });
      view.addEventListener("pointermove", (event) => {
        const drag = this.drag;
        if (!drag || drag.pointer !== event.pointerId) return;
        event.preventDefault();
        const [x, y] = this.canvasPoint(event);
        const person = this.people[this.selected.person];
        if (drag.kind === "joint") {
          this.moveJoint(this.selected, x, y);
        } else {
          // Moves and scales start again from the person as it was when the drag began.
          Object.assign(person, JSON.parse(drag.before));
          if (drag.kind === "move") {
            const dx = x - drag.start[0], dy = y - drag.start[1];
            this.transform(person, (px, py) => [px + dx, py + dy]);
          } else {
            const box = drag.box;
            const from = Math.hypot(drag.start[0] - box.middleX, drag.start[1] - box.middleY);
            const to = Math.hypot(x - box.middleX, y - box.middleY);
            const factor = clamp(to / Math.max(from, 1), 0.1, 10);
            this.transform(person, (px, py) => [
              box.middleX + (px - box.middleX) * factor,
              box.middleY + (py - box.middleY) * factor,
            ]);
          }
        }
        drag.moved = true;
        this.redraw();
        this.describe();
      });
      const end = (event) => {
        const drag = this.drag;
        if (!drag || drag.pointer !== event.pointerId) return;
        this.drag = null;
        if (drag.moved) this.changed();
        else this.undo.pop(); // a click only selected
      };
      view.addEventListener("pointerup", end);
      view.addEventListener("pointercancel", end);
      view.addEventListener("keydown", (event) => this.key(event));
      this.root.querySelectorAll("[data-action]").forEach((control) => {
        const act = () => this.act(control.dataset.action, control);
        control.addEventListener(control.type === "checkbox" ? "change" : "click", act);
      });
      new ResizeObserver(() => this.redraw()).observe(view);
    }

    act(action, control) {
      if (action === "add") this.addPerson();
      else if (action === "remove") this.removePerson();
      else if (action === "toggle") this.toggleJoint();
      else if (action === "bigger") this.scalePerson(SCALE_STEP);
      else if (action === "smaller") this.scalePerson(1 / SCALE_STEP);
      else if (action === "undo") this.undoLast();
      else if (action === "download") this.download();
      else if (action === "details") {
        this.details = control.checked;
        if (!this.details && this.selected && this.selected.part !== "body") this.selected = null;
        this.redraw();
      } else if (action === "clear") {
        this.people = [];
        this.selected = null;
        this.undo = [];
        this.props.value = null;
        this.trigger("change");
        this.redraw();
        this.say("Cleared: Run finds the pose in the photo again.");
      }
    }

    key(event) {
      const handles = this.handles();
      const s = this.selected;
      const at = s ? handles.findIndex((h) => h.person === s.person && h.part === s.part
        && h.index === s.index) : -1;
      const step = event.shiftKey ? 10 : 1;
      const arrows = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step],
        ArrowDown: [0, step] };
      if ((event.key === "n" || event.key === "p" || event.key === "N" || event.key === "P")
        && handles.length) {
        const back = event.key.toLowerCase() === "p";
        const next = at < 0 ? (back ? handles.length - 1 : 0)
          : (at + (back ? -1 : 1) + handles.length) % handles.length;
        this.selected = handles[next];
        this.redraw();
        this.describe();
      } else if (arrows[event.key] && s && at >= 0) {
        const [x, y] = this.pointAt(s);
        this.remember();
        this.moveJoint(s, x + arrows[event.key][0], y + arrows[event.key][1]);
        this.changed();
        this.describe();
      } else if (event.key === "h" || event.key === "H") {
        this.toggleJoint();
      } else if (event.key === "+" || event.key === "=") {
        this.scalePerson(SCALE_STEP);
      } else if (event.key === "-") {
        this.scalePerson(1 / SCALE_STEP);
      } else if (event.key === "Delete" || event.key === "Backspace") {
        this.removePerson();
      } else if (event.key === "Escape") {
        this.selected = null;
        this.redraw();
      } else if ((event.ctrlKey || event.metaKey) && event.key === "z") {
        this.undoLast();
      } else {
        return;
      }
      event.preventDefault();
    }

    describe() {
      const s = this.selected;
      if (!s) return;
      const person = this.people[s.person];
      const point = this.pointAt(s);
      const name = s.part === "body" ? BODY_NAMES[s.index]
        : s.part === "face" ? `face point ${s.index + 1}`
          : `${s.part === "hand0" ? "left" : "right"} hand point ${s.index + 1}`;
      const hidden = s.part === "body" && person.hidden[s.index] ? " (hidden)" : "";
      this.say(`Person ${s.person + 1} of ${this.people.length}: ${name}${hidden} at `
        + `${point[0]}, ${point[1]}.`);
    }
  }

  window.PoseEditor = {
    mount(element, props, trigger, watch) {
      const root = element.querySelector(".pose-editor");
      if (root.poseEditor) return root.poseEditor;
      root.poseEditor = new Editor(root, props, trigger, watch);
      return root.poseEditor;
    },
  };
})();
