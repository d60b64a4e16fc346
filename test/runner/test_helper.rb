# frozen_string_literal: true

# Helpers for the opschain library's tests: a repository directory with actions.rb and a step context, and the
# runner's commands (deploy/runner/bin) run against it as the step-service runs them.
require 'minitest/autorun'
require 'json'
require 'open3'
require 'tmpdir'
require 'zlib'
require 'fileutils'

ROOT = File.expand_path('../..', __dir__)
LIB = File.join(ROOT, 'deploy/runner/lib')
BIN = File.join(ROOT, 'deploy/runner/bin')
$LOAD_PATH.unshift(LIB)

module RunnerTest
  Result = Struct.new(:stdout, :stderr, :status) do
    def success? = status.success?
    def exitstatus = status.exitstatus
  end

  def setup
    @repo = Dir.mktmpdir('opschain-test-')
  end

  def teardown
    FileUtils.rm_rf(@repo)
  end

  # A step context document (compatibility.md's shape) in <repo>/<folder>/step_context.json.
  def write_context(properties: {}, context: {}, folder: '.mintpress', zip: false)
    owners = properties.keys.map(&:to_s)
    document = { 'context' => { 'parent_order' => owners }.merge(context), 'properties' => properties }
    FileUtils.mkdir_p(File.join(@repo, folder))
    json = JSON.generate(document)
    if zip
      File.binwrite(File.join(@repo, folder, 'step_context.json.zip'), zip_bytes('step_context.json' => json))
    else
      File.write(File.join(@repo, folder, 'step_context.json'), json)
    end
  end

  def write(path, content)
    FileUtils.mkdir_p(File.dirname(File.join(@repo, path)))
    File.write(File.join(@repo, path), content)
  end

  def run_command(name, *args, env: {})
    base = { 'RUBYLIB' => LIB, 'OPSCHAIN_REPO_DIR' => @repo, 'OPSCHAIN_REPO_FOLDER' => nil, 'BUNDLE_GEMFILE' => nil, 'HOME' => @repo }
    stdout, stderr, status = Open3.capture3(base.merge(env), File.join(BIN, name), *args, chdir: @repo)
    Result.new(stdout, stderr, status)
  end

  def action(*args, env: {}) = run_command('opschain-action', *args, env: env)

  def step_result(folder = '.mintpress') = JSON.parse(File.read(File.join(@repo, folder, 'step_result.json')))

  def diffs(folder = '.mintpress') = step_result(folder)['properties_diffs']

  # A zip of name => text, deflated, with a central directory (as fflate writes step_context.json.zip).
  def zip_bytes(entries)
    locals = ''.b
    central = ''.b
    entries.each do |name, text|
      data = text.b
      deflater = Zlib::Deflate.new(6, -Zlib::MAX_WBITS)
      packed = deflater.deflate(data, Zlib::FINISH)
      deflater.close
      crc = Zlib.crc32(data)
      offset = locals.bytesize
      locals << [0x04034b50, 20, 0, 8, 0, 0x21, crc, packed.bytesize, data.bytesize, name.bytesize, 0].pack('VvvvvvVVVvv') << name.b << packed
      central << [0x02014b50, 20, 20, 0, 8, 0, 0x21, crc, packed.bytesize, data.bytesize, name.bytesize, 0, 0, 0, 0, 0, offset].pack('VvvvvvvVVVvvvvvVV') << name.b
    end
    locals + central + [0x06054b50, 0, 0, entries.size, entries.size, central.bytesize, locals.bytesize, 0].pack('VvvvvVVv')
  end
end
