# frozen_string_literal: true

require 'json'
require 'zlib'

module OpsChain
  # Where the step's files are: the repository (/opt/opschain), its repo folder, the step context in it.
  module Paths
    REPO_FOLDERS = %w[.opschain .mintpress].freeze
    CONTEXT_NAMES = %w[step_context.json step_context.json.zip].freeze

    module_function

    def repo_dir = ENV.fetch('OPSCHAIN_REPO_DIR', '/opt/opschain')

    # OPSCHAIN_REPO_FOLDER when set (the step-service always sets it), else .mintpress as before.
    def configured_folder
      folder = ENV.fetch('OPSCHAIN_REPO_FOLDER', '')
      folder.empty? ? nil : folder
    end

    # The repo folders to look in, the configured one first: .opschain and .mintpress are both understood.
    def folders = [configured_folder, *REPO_FOLDERS].compact.uniq

    # The repo folder in use: the configured one if it exists in the repository, else the first that exists.
    def repo_folder
      folders.find { |folder| File.directory?(File.join(repo_dir, folder)) } || configured_folder || '.mintpress'
    end

    # The first step_context.json or step_context.json.zip found in the repo folders, or nil.
    def context_file
      folders.product(CONTEXT_NAMES).map { |folder, name| File.join(repo_dir, folder, name) }.find { |path| File.file?(path) }
    end
  end

  # Reads step_context.json, plain or inside step_context.json.zip (as the BuildKit secret mount gives it).
  module StepContextFile
    module_function

    def read(path)
      text = path.end_with?('.zip') ? Zip.entry(File.binread(path), 'step_context.json') : File.read(path)
      normalise(JSON.parse(text))
    rescue JSON::ParserError => e
      raise ArgumentError, "#{path}: not a JSON step context (#{e.message})"
    end

    # {"context": {...}, "properties": {"<owner>": {...}}}; the older shape (context.project/environment and
    # top-level project.properties / environment.properties) becomes the newer one.
    def normalise(document)
      raise ArgumentError, 'the step context must be a JSON object' unless document.is_a?(Hash)

      context = document['context'].is_a?(Hash) ? document['context'].dup : {}
      properties = document['properties'].is_a?(Hash) ? document['properties'].dup : {}
      %w[project environment asset].each do |owner|
        legacy = document[owner]
        properties[owner] ||= legacy['properties'] if legacy.is_a?(Hash) && legacy['properties'].is_a?(Hash)
      end
      parents = context['parents'].is_a?(Hash) ? context['parents'].dup : {}
      %w[project environment asset].each { |owner| parents[owner] ||= context[owner] if context[owner].is_a?(Hash) }
      # Without parents, those the change names (change.project_code / _name, environment_code / _name).
      change = context['change'].is_a?(Hash) ? context['change'] : {}
      %w[project environment].each do |owner|
        named = { 'code' => change["#{owner}_code"], 'name' => change["#{owner}_name"] }.reject { |_, value| value.to_s.empty? }
        parents[owner] ||= named unless named.empty?
      end
      context['parents'] = parents unless parents.empty?
      context['parent_order'] ||= properties.keys
      { 'context' => context, 'properties' => properties }
    end

    # The one zip reader opschain-exec needs: finds an entry through the central directory (stored or deflated).
    module Zip
      module_function

      def entry(bytes, name)
        eocd = bytes.rindex("PK\x05\x06".b) or raise ArgumentError, 'not a zip file'
        count, _size, offset = bytes.byteslice(eocd + 10, 10).unpack('vVV')
        count.times do
          header = bytes.byteslice(offset, 46)
          raise ArgumentError, 'corrupt zip central directory' unless header&.start_with?("PK\x01\x02".b)

          method, = header.byteslice(10, 2).unpack('v')
          compressed, = header.byteslice(20, 4).unpack('V')
          name_length, extra_length, comment_length = header.byteslice(28, 6).unpack('vvv')
          local, = header.byteslice(42, 4).unpack('V')
          entry_name = bytes.byteslice(offset + 46, name_length)
          offset += 46 + name_length + extra_length + comment_length
          next unless entry_name == name

          local_name, local_extra = bytes.byteslice(local + 26, 4).unpack('vv')
          data = bytes.byteslice(local + 30 + local_name + local_extra, compressed)
          return data.force_encoding('UTF-8') if method.zero?
          raise ArgumentError, "zip entry #{name}: unsupported compression method #{method}" unless method == 8

          inflater = Zlib::Inflate.new(-Zlib::MAX_WBITS)
          return inflater.inflate(data).tap { inflater.close }.force_encoding('UTF-8')
        end
        raise ArgumentError, "the zip holds no #{name}"
      end
    end
  end

  # Repository properties, read only, below every owner: <repo folder>/properties.json (.toml, .yaml, .yml), then
  # <repo folder>/environments/<environment code>.json (.toml, .yaml, .yml) of the older docs, then the files of
  # the <repo folder>/properties/ tree that apply to the step's parents, top down:
  #   properties/*, properties/projects/*, properties/projects/<project code>/*,
  #   …/<project code>/environments/*, …/environments/<environment code>/*,
  #   …/<environment code>/assets/*, …/assets/<asset code>/*
  # (files directly in each folder, .json/.toml/.yaml/.yml, alphabetically; codes from context.parents).
  module RepositoryProperties
    EXTENSIONS = %w[.json .toml .yaml .yml].freeze

    module_function

    def load = folders.reduce({}) { |merged, (_, dir, only)| OpsChain.deep_merge(merged, merge_files(dir, only: only)) }

    # Only the files of one owner's own folder (properties/projects/<code>/ for :project…).
    def for_owner(owner)
      folders.select { |name, _| name == owner.to_s }.reduce({}) { |merged, (_, dir, only)| OpsChain.deep_merge(merged, merge_files(dir, only: only)) }
    end

    def root = File.join(Paths.repo_dir, Paths.repo_folder)

    # [owner or nil, folder, the one file name its files must have or nil] in load order.
    def folders
      base = File.join(root, 'properties')
      parents = OpsChain.document['context']['parents'] || {}
      codes = %w[project environment asset].to_h do |owner|
        code = parents.is_a?(Hash) && parents[owner].is_a?(Hash) ? parents[owner]['code'].to_s : ''
        [owner, code.empty? || code.include?('/') || code.start_with?('.') ? nil : code]
      end
      list = [[nil, root, 'properties']]
      list << ['environment', File.join(root, 'environments'), codes['environment']] if codes['environment']
      list += [[nil, base, nil], [nil, File.join(base, 'projects'), nil]]
      path = File.join(base, 'projects')
      [%w[project environments], %w[environment assets], ['asset', nil]].each do |owner, below|
        break unless codes[owner]

        path = File.join(path, codes[owner])
        list << [owner, path, nil]
        break unless below

        path = File.join(path, below)
        list << [nil, path, nil]
      end
      list
    end

    # The properties files directly in dir, merged alphabetically; with `only`, just the files of that name.
    def merge_files(dir, only: nil)
      return {} unless File.directory?(dir)

      names = Dir.children(dir).sort.select { |name| EXTENSIONS.include?(File.extname(name)) && File.file?(File.join(dir, name)) }
      names = names.select { |name| File.basename(name, '.*') == only } if only
      names.reduce({}) do |merged, name|
        path = File.join(dir, name)
        values = parse(path)
        values = {} if values.nil?
        raise ArgumentError, "#{path} must hold a JSON object" unless values.is_a?(Hash)

        OpsChain.deep_merge(merged, values)
      end
    end

    def parse(path)
      text = File.read(path)
      case File.extname(path)
      when '.json' then JSON.parse(text)
      when '.toml' then Toml.parse(text, path)
      else YAML.safe_load(text)
      end
    end
  end
end
