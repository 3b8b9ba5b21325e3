// Images a person attaches (a file, a paste or a drop), read into data: URLs the API takes. A large photo is
// scaled down first, so that it fits the request and the browser's storage; nothing is sent anywhere else.

const MAX_BYTES = 20 * 2 ** 20;
const MAX_SIDE = 1536; // pixels: larger images are scaled to this, keeping their shape
const KEPT_TYPES = new Set(["image/png", "image/jpeg"]); // what the server decodes; others are redrawn as PNG

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new Error(`Could not read ${file.name || "the image"}.`));
    reader.readAsDataURL(file);
  });
}

function decode(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("This browser cannot open that image. Try a PNG or JPEG file."));
    img.src = url;
  });
}

// A data: URL of the image in `file`, or an Error whose message a person can act on.
export async function imageUrl(file) {
  if (!file.type.startsWith("image/")) throw new Error(`${file.name || "That file"} is not an image.`);
  if (file.size > MAX_BYTES) throw new Error(`${file.name || "That image"} is larger than 20 MB.`);
  const url = await readAsDataUrl(file);
  const img = await decode(url);
  const scale = Math.min(1, MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
  if (scale === 1 && KEPT_TYPES.has(file.type)) return url;
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return file.type === "image/jpeg" ? canvas.toDataURL("image/jpeg", 0.9) : canvas.toDataURL("image/png");
}

// The image files among a paste's or a drop's items.
export function imageFiles(transfer) {
  if (!transfer) return [];
  return [...transfer.files].filter((f) => f.type.startsWith("image/"));
}
